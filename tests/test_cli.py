"""The stock `python -m sglang.launch_server` with the plugin: flags listed, bad values refused at startup.

These also prove the plugin loads: SGLang only logs plugin load errors, so a missing flag fails here.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from bad_inputs import FLAGS
from raas_sglang.cpu_env import has_cuda, launch_env

LAUNCH = [sys.executable, "-m", "sglang.launch_server"]
CPU = [] if has_cuda() else ["--device", "cpu", "--dtype", "float32"]

BAD = FLAGS  # the startup rows of the bad-input table


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
    for flag in ("--kv-policy {dense,raas,streaming,h2o,quest,raas+quest}", "--raas-budget", "--raas-refresh-ratio", "--raas-score", "--raas-reduce",
                 "--raas-reserve"):
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
