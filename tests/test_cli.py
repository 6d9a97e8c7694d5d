"""The stock `python -m sglang.launch_server` with the plugin: flags listed, bad values refused at startup.

These also prove the plugin loads: SGLang only logs plugin load errors, so a missing flag fails here.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from raas_sglang.cpu_env import has_cuda, launch_env

LAUNCH = [sys.executable, "-m", "sglang.launch_server"]
CPU = [] if has_cuda() else ["--device", "cpu", "--dtype", "float32"]

BAD = {
    "unknown-policy": (["--kv-policy", "lru"], "--kv-policy: must be one of dense, raas"),
    "budget-not-int": (["--kv-policy", "raas", "--raas-budget", "lots"], "--raas-budget: must be a positive integer"),
    "budget-zero": (["--kv-policy", "raas", "--raas-budget", "0"], "--raas-budget: must be a positive integer"),
    "budget-one-page": (["--kv-policy", "raas", "--raas-budget", "16"], "--raas-budget: must be at least 2 pages = 32 tokens"),
    "budget-one-page-p64": (
        ["--kv-policy", "raas", "--page-size", "64", "--raas-budget", "64"],
        "--raas-budget: must be at least 2 pages = 128 tokens at page size 64",
    ),
    "ratio-zero": (["--kv-policy", "raas", "--raas-refresh-ratio", "0"], "--raas-refresh-ratio: must be a number in (0, 1]"),
    "ratio-above-one": (["--kv-policy", "raas", "--raas-refresh-ratio", "1.5"], "--raas-refresh-ratio: must be a number in (0, 1]"),
    "raas-flag-with-dense": (
        ["--kv-policy", "dense", "--raas-budget", "256"],
        "--raas-budget: only allowed with --kv-policy raas",
    ),
    "raas-flag-without-policy": (["--raas-refresh-ratio", "0.25"], "--raas-refresh-ratio: only allowed with --kv-policy raas"),
    # combinations RaaS does not support yet: refused after resolution, before any child process starts
    "raas-with-fa3": (
        ["--kv-policy", "raas", "--attention-backend", "fa3", "--max-total-tokens", "4096"],
        "--kv-policy raas does not support attention backend fa3; use --attention-backend flashinfer or",
    ),
    "raas-score-unknown": (["--kv-policy", "raas", "--raas-score", "max"], "--raas-score: must be one of auto, exact, quest"),
    "raas-reduce-unknown": (
        ["--kv-policy", "raas", "--raas-reduce", "sum"],
        "--raas-reduce: must be one of mean-mean, max-mean, mean-max, max-max",
    ),
    "raas-exact-on-triton": (
        ["--kv-policy", "raas", "--raas-score", "exact", "--attention-backend", "triton", "--max-total-tokens", "4096"],
        "--kv-policy raas does not support --raas-score exact on the triton/flashinfer backends",
    ),
    "raas-with-hicache": (
        ["--kv-policy", "raas", "--enable-hierarchical-cache", "--max-total-tokens", "4096"],
        "--kv-policy raas does not support the hierarchical cache; drop --enable-hierarchical-cache",
    ),
}


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        LAUNCH + args, env=launch_env(), capture_output=True, text=True, timeout=timeout, start_new_session=True
    )


@pytest.fixture(scope="module")
def refusals(model_dir):
    """Run every bad launch at once (each costs an SGLang import, ~5 s)."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {
            name: pool.submit(_run, ["--model-path", str(model_dir), *CPU, *args]) for name, (args, _) in BAD.items()
        }
        return {name: f.result() for name, f in futures.items()}


def test_help_lists_raas_flags():
    out = _run(["--help"])
    assert out.returncode == 0, out.stderr[-2000:]
    for flag in ("--kv-policy {dense,raas,streaming,h2o}", "--raas-budget", "--raas-refresh-ratio", "--raas-score", "--raas-reduce"):
        assert flag in out.stdout, f"{flag} missing from --help: the raas plugin did not load"


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_value_refused_at_startup(refusals, case):
    proc = refusals[case]
    expected = BAD[case][1]
    assert proc.returncode != 0
    matching = [line for line in proc.stderr.splitlines() if expected in line]
    assert len(matching) == 1 and matching[0].startswith("error: " + expected), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_plugin_imports_from_any_folder(tmp_path):
    """`raas_sglang.patches` / `.kernels` resolve both from the repo root and from an unrelated folder."""
    code = "import raas_sglang.patches as p, raas_sglang.kernels as k; print(p.register.__module__, k.__name__)"
    for cwd in (None, tmp_path):
        out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "raas_sglang.patches raas_sglang.kernels" in out.stdout, out.stderr
