"""Run many `python -m sglang.launch_server ...` command lines that are expected to stop at startup, paying SGLang's
import once: this process imports what every launch imports, then forks once per command line and runs
`sglang.launch_server` as `__main__` in the child (the stock code path: plugins load, arguments parse and resolve
there, as in a cold `python -m` run). A cold launch costs ~6 s of imports on 2 cores; a forked one well under 1 s.

    python tests/preloaded_launch.py results.json < cases.json

stdin: `{"cases": {name: [argv...] or {"argv": [...], "env": {...}}}, "timeout": seconds per case, "parallel": children at once}`; results.json:
`{name: {"returncode": int, "stdout": str, "stderr": str, "timed_out": bool}}` (timed_out: the child ran past its
timeout and was killed with its process group, returncode -9; a launcher whose scheduler failed also ends with -9:
SGLang's `kill_process_tree` kills its own group).
NOTE: only for launches that refuse before starting any server: a child that gets further would start one.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import sys
import tempfile
import time
import traceback

import sglang.launch_server  # noqa: F401  (the imports every launch pays, paid once here)
import sglang.srt.entrypoints.http_server  # noqa: F401


def _child(argv: list[str], env: dict[str, str], out_fd: int, err_fd: int) -> None:
    """In the forked child: run the launcher as `env ... python -m sglang.launch_server *argv` would; never
    returns."""
    code = 1
    try:
        os.environ.update(env)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        os.setsid()  # its own process group: a launch that got further is killed with all it started
        sys.argv = [sglang.launch_server.__file__, *argv]
        sys.modules.pop("sglang.launch_server", None)  # as `python -m` (runpy warns about a module already loaded)
        runpy.run_module("sglang.launch_server", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stop:  # what the interpreter does with it at exit
        if stop.code is None or isinstance(stop.code, int):
            code = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - an uncaught error: the traceback the interpreter would print
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class _Running:
    def __init__(self, case: list[str] | dict, timeout: float):
        argv, env = (case, {}) if isinstance(case, list) else (case["argv"], case.get("env", {}))
        self.out, self.err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        self.pid = os.fork()
        if self.pid == 0:
            _child(argv, env, self.out.fileno(), self.err.fileno())
        self.deadline = time.monotonic() + timeout

    def poll(self) -> dict | None:
        """The child's result once it has ended (killed, with returncode -9, past its deadline); else None."""
        done, status = os.waitpid(self.pid, os.WNOHANG)
        timed_out = False
        if not done and time.monotonic() > self.deadline:
            os.killpg(self.pid, signal.SIGKILL)
            done, status = os.waitpid(self.pid, 0)
            timed_out = True
        if not done:
            return None
        texts = []
        for f in (self.out, self.err):
            f.seek(0)
            texts.append(f.read().decode(errors="replace"))
            f.close()
        return {"returncode": os.waitstatus_to_exitcode(status), "stdout": texts[0], "stderr": texts[1],
                "timed_out": timed_out}


def run_all(cases: dict[str, list[str]], timeout: float, parallel: int) -> dict[str, dict]:
    """Each command line in a forked child, `parallel` at a time."""
    todo, running, results = list(cases.items()), {}, {}
    while todo or running:
        while todo and len(running) < parallel:
            name, argv = todo.pop(0)
            running[name] = _Running(argv, timeout)
        for name, child in list(running.items()):
            result = child.poll()
            if result is not None:
                results[name] = result
                del running[name]
        time.sleep(0.02)
    return results


def main() -> None:
    spec = json.load(sys.stdin)
    results = run_all(spec["cases"], spec.get("timeout", 60), spec.get("parallel", 2))
    with open(sys.argv[1], "w") as out:
        json.dump(results, out)


if __name__ == "__main__":
    main()
