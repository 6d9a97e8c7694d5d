"""The stock `python -m sglang.launch_server` with the plugin: flags listed, bad values refused at startup.

These also prove the plugin loads: SGLang only logs plugin load errors, so a missing flag fails here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bad_inputs import BASE_VIEW, FLAGS, LAUNCH as LAUNCH_CASES
from raas_sglang.cpu_env import has_cuda, launch_env

LAUNCH = [sys.executable, "-m", "sglang.launch_server"]
PRELOADED = Path(__file__).with_name("preloaded_launch.py")
CPU = [] if has_cuda() else ["--device", "cpu", "--dtype", "float32"]

BAD = FLAGS  # the launch cases of the bad-input table: name -> (extra flags, message)


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """A cold `python -m sglang.launch_server *args` in its own process group (killed whole on a timeout)."""
    proc = subprocess.Popen(LAUNCH + args, env=launch_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def refusals(model_dir, tmp_path_factory):
    """Run every bad launch. Each is `python -m sglang.launch_server` run as `__main__` in a process forked from one
    that imported SGLang once (tests/preloaded_launch.py): a cold launch spends ~6 s importing on 2 cores, and the
    cold path itself is tested by test_help_lists_raas_flags and test_one_refusal_cold."""
    per_case, parallel = 60, 2  # a forked refusal takes ~1 s; one that starts a server is killed at 60 s
    spec = {"cases": {name: {"argv": ["--model-path", str(model_dir), *CPU, *args], "env": LAUNCH_CASES[name].env}
                      for name, (args, _) in BAD.items()},
            "timeout": per_case, "parallel": parallel}
    results = tmp_path_factory.mktemp("refusals") / "results.json"
    # NOTE: the runner kills each child's process group at its timeout; its own limit leaves room for all of them
    proc = subprocess.run([sys.executable, str(PRELOADED), str(results)], input=json.dumps(spec), env=launch_env(),
                          capture_output=True, text=True, start_new_session=True,
                          timeout=-(-len(BAD) // parallel) * per_case + 120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {name: subprocess.CompletedProcess([], r["returncode"], r["stdout"], r["stderr"])
            for name, r in json.loads(results.read_text()).items()}


def test_help_lists_raas_flags():
    out = _run(["--help"])
    assert out.returncode == 0, out.stderr[-2000:]
    for flag in ("--kv-policy {dense,raas,streaming,h2o,quest,raas+quest}", "--raas-budget", "--raas-refresh-ratio",
                 "--raas-refresh-threshold", "--raas-score", "--raas-reduce", "--raas-reserve"):
        assert flag in out.stdout, f"{flag} missing from --help: the raas plugin did not load"


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_value_refused_at_startup(refusals, case):
    proc = refusals[case]
    expected = BAD[case][1]
    assert proc.returncode != 0
    matching = [line for line in proc.stderr.splitlines() if expected in line]
    assert len(matching) == 1 and matching[0].startswith("error: " + expected), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_one_refusal_cold(model_dir):
    """One bad launch as a user runs it, in a fresh interpreter: the same refusal as the forked runs see."""
    args, expected = BAD["raas-with-fa3"]  # refused after resolution, the latest point of any launch case
    proc = _run(["--model-path", str(model_dir), *CPU, *args])
    assert proc.returncode != 0 and ("error: " + expected) in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_plugin_imports_from_any_folder(tmp_path):
    """`raas_sglang.patches` / `.kernels` resolve both from the repo root and from an unrelated folder."""
    code = "import raas_sglang.patches as p, raas_sglang.kernels as k; print(p.register.__module__, k.__name__)"
    for cwd in (None, tmp_path):
        out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "raas_sglang.patches raas_sglang.kernels" in out.stdout, out.stderr


VIEW_SCRIPT = r"""
import json, sys
from sglang.srt.arg_groups.overrides import resolving_view
from raas_sglang.patches.server_args import engine_server_args
from raas_sglang.patches.startup_checks import check_server_args

record = engine_server_args(model_path=sys.argv[1], device="cpu", attention_backend="torch_native", dtype="float32",
                            max_total_tokens=4096, kv_policy="raas")
record.resolve_once()
check_server_args(None, record)  # a plain RaaS server: refused by no row
view, values = resolving_view(record), {}
for name in json.loads(sys.argv[2]):
    node = view
    for part in name.split("."):
        node = getattr(node, part)
    values[name] = node if node is None or isinstance(node, (bool, int, float)) else str(node)
print("RESULT " + json.dumps(values))
"""


@pytest.mark.skipif(has_cuda(), reason="BASE_VIEW is the resolved view of a CPU server")
def test_base_view_is_sglangs(model_dir, tmp_path):
    """The resolved values the `Resolved` bad-input cases start from (tests/bad_inputs.py BASE_VIEW) are the
    names and values of a real resolved plain `--kv-policy raas` CPU server, which no startup row refuses."""
    import json

    script = tmp_path / "view.py"
    script.write_text(VIEW_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(model_dir), json.dumps(list(BASE_VIEW))], env=launch_env(),
                          capture_output=True, text=True, timeout=180, start_new_session=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert json.loads(lines[-1][7:]) == BASE_VIEW
