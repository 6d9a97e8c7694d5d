"""Hooks cannot fail silently (patches/hooks.py): after SGLang's `load_plugins()`, a process whose RaaS hooks all
took verifies them; one where a hook target is missing (an SGLang that differs from 0.5.23) stops with
`HookNotApplied` naming the target, in the launcher and in a scheduler-side process alike. Before this, SGLang's
`HookRegistry.apply_hooks` logged the failure and the server served on without the hook."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from raas_sglang.cpu_env import launch_env

SCRIPT = r"""
import multiprocessing as mp
import pkgutil
import sys


def load(remove):
    if remove:
        owner, attr = remove.rsplit(".", 1)
        delattr(pkgutil.resolve_name(owner), attr)  # as if SGLang had renamed it
    try:
        from sglang.srt.plugins import load_plugins

        load_plugins()
        from raas_sglang.patches import hooks

        return "verified %d" % hooks.verify()
    except Exception as err:
        return "%s: %s" % (type(err).__name__, err)


def child(queue, remove):
    queue.put(load(remove))


if __name__ == "__main__":
    side, remove = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None
    if side == "launcher":  # no parent process: the launcher's hooks
        print("RESULT " + load(remove))
    else:  # a spawned child, as SGLang's scheduler is: the scheduler-side hooks
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        proc = ctx.Process(target=child, args=(queue, remove))
        proc.start()
        print("RESULT " + queue.get(timeout=300))
        proc.join()
"""

CASES = {
    "scheduler-ok": ("scheduler",),
    "scheduler-missing": ("scheduler", "sglang.srt.mem_cache.common.release_kv_cache"),
    "launcher-missing": ("launcher", "sglang.srt.server_args.ServerArgs.check_server_args"),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    script = tmp_path_factory.mktemp("hooks") / "load.py"
    script.write_text(SCRIPT)

    def run(args):
        proc = subprocess.run([sys.executable, str(script), *args], env=launch_env(), capture_output=True, text=True,
                              timeout=400, start_new_session=True)
        lines = [line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        assert lines, proc.stdout[-2000:] + proc.stderr[-3000:]
        return lines[-1]

    with ThreadPoolExecutor(len(CASES)) as pool:
        return dict(zip(CASES, pool.map(run, CASES.values())))


def test_all_hooks_verified_in_a_scheduler_process(results):
    kind, n = results["scheduler-ok"].split()
    assert kind == "verified" and int(n) >= 15, results["scheduler-ok"]


@pytest.mark.parametrize("case", ["scheduler-missing", "launcher-missing"])
def test_missing_hook_target_stops_the_process_naming_it(results, case):
    target = CASES[case][1]
    assert results[case].startswith("HookNotApplied: raas_sglang: these SGLang hooks did not take"), results[case]
    assert target in results[case]
