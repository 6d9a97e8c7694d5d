"""Start and stop a real `python -m sglang.launch_server` for the demo, the tests and the benchmarks.

The server binds 127.0.0.1, runs in its own process group (`start_new_session`), gets the CPU environment from
`raas_sglang.cpu_env` when there is no CUDA device, and is stopped by its process-group id — never by name.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from raas_sglang.cpu_env import has_cuda, launch_env

# SGLang's own KV accounting checks, raising on any violation (busy and idle pool identities, the allocator's
# duplicate-page check, per-request page ownership), and the plugin's host-mirror check. Tests and benchmarks run servers
# with these on.
STRICT_KV_CHECKS = {
    "SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_BUSY": "1",
    "SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_IDLE": "1",
    "SGLANG_CHECK_KV_PAGE_INVARIANTS": "1",
    "SGLANG_DEBUG_MEMORY_POOL": "1",
    "RAAS_CHECK_MIRRORS": "1",  # the plugin's own: its host mirror equals its device state at every decode step
}
# every KV and tree check SGLang has (bench.soak runs with all of them): STRICT_KV_CHECKS plus the radix tree's
# sanity check and the crash-on-violation level of SGLang's value/index invariant probes
ALL_KV_CHECKS = {
    **STRICT_KV_CHECKS,
    "SGLANG_ENABLE_TREE_CACHE_SANITY_CHECK": "1",
    "SGLANG_INVARIANT_CHECK": "2",
}
CPU_ARGS = ("--device", "cpu", "--attention-backend", "torch_native", "--dtype", "float32")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(model: str | Path, port: int, args: Sequence[str] = ()) -> list[str]:
    """The launch command; on a machine without CUDA it adds the CPU engine's device/backend/dtype flags."""
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(model)]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    if not has_cuda():
        given = set(args)
        for flag, value in zip(CPU_ARGS[::2], CPU_ARGS[1::2]):
            if flag not in given:
                cmd += [flag, value]
    return cmd + list(args)


@dataclass
class Server:
    """A running server. `url` has no trailing slash. `log_path` holds its stdout and stderr."""

    proc: subprocess.Popen
    port: int
    log_path: Path
    _log: Any = field(repr=False, default=None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str, timeout: float = 30) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")

    def post(self, path: str, body: dict, timeout: float = 600) -> Any:
        req = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data = resp.read()
        try:
            return json.loads(data)
        except ValueError:
            return data.decode(errors="replace")  # a few endpoints (/flush_cache) answer in plain text

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM the whole process group, then SIGKILL what is left after `timeout` seconds."""
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
                _wait_group_gone(self.proc.pid, wait)
                break
            except subprocess.TimeoutExpired:
                continue
        if self._log:
            self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _wait_group_gone(pgid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    raise subprocess.TimeoutExpired(f"process group {pgid}", timeout)


class ServerFailed(RuntimeError):
    pass


BIND_FAILED = "address already in use"  # uvicorn's bind error: another process took the port after free_port()


def start_server(
    model: str | Path,
    args: Sequence[str] = (),
    *,
    port: int | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    log_path: str | Path | None = None,
    attempts: int = 3,
) -> Server:
    """Launch a server and wait until `/health` answers 200. Raises `ServerFailed` with the log tail.

    NOTE: a port from `free_port()` can be taken before the server binds it (servers started side by side pick
    their internal ports at random); then SGLang's launcher logs the bind error and hangs, so the server is
    stopped and started again on a fresh port, up to `attempts` times (only when no `port` was asked for)."""
    for attempt in range(attempts if port is None else 1):
        try:
            return _start_once(model, args, port or free_port(), env, timeout, log_path)
        except _PortTaken as taken:
            if attempt == attempts - 1 or port is not None:
                raise ServerFailed(str(taken)) from None


class _PortTaken(ServerFailed):
    pass


def spawn(model: str | Path, args: Sequence[str] = (), *, port: int | None = None, env: dict[str, str] | None = None,
          log_path: str | Path | None = None) -> Server:
    """Launch a server process in its own process group without waiting for it: e.g. the node of rank >= 1 of a
    multi-node launch, which serves no HTTP and only joins node 0's process groups."""
    port = port or free_port()
    if log_path is None:
        log_path = Path(tempfile.mkstemp(prefix=f"sglang-{port}-", suffix=".log")[1])
    log_path = Path(log_path)
    log = open(log_path, "w")
    proc = subprocess.Popen(
        server_command(model, port, args),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=launch_env(None, **(env or {})),
        start_new_session=True,
    )
    return Server(proc, port, log_path, log)


def _start_once(model, args, port: int, env, timeout: float, log_path) -> Server:
    server = spawn(model, args, port=port, env=env, log_path=log_path)
    proc = server.proc
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            server.stop()
            raise ServerFailed(f"server exited with {proc.returncode}:\n{server.log_text()[-4000:]}")
        try:
            with urllib.request.urlopen(server.url + "/health", timeout=5) as resp:
                if resp.status == 200:
                    return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if BIND_FAILED in server.log_text():
            server.stop()
            raise _PortTaken(f"port {port} was taken before the server bound it:\n{server.log_text()[-2000:]}")
        time.sleep(1)
    server.stop()
    raise ServerFailed(f"server not healthy after {timeout:.0f} s:\n{server.log_text()[-4000:]}")


def start_router(worker_urls: Sequence[str], args: Sequence[str] = ("--policy", "cache_aware"), *,
                 timeout: float = 120, log_path: str | Path | None = None) -> Server:
    """Launch SGLang's router (`python -m sglang_router.launch_router`, the `router` extra) in front of running
    workers, on 127.0.0.1 in its own process group, and wait until it has registered every worker as healthy
    (it registers them in the background after it starts answering). Raises `ServerFailed` with the log tail."""
    return _launch_router(["--worker-urls", *worker_urls, *args], len(worker_urls), timeout, log_path)


def start_pd_router(prefill_url: str, bootstrap_port: int, decode_url: str, *, timeout: float = 120,
                    log_path: str | Path | None = None) -> Server:
    """SGLang's router in PD disaggregation mode (`--pd-disaggregation`) in front of one prefill server (with its
    bootstrap port) and one decode server; it sends each request to both with the same bootstrap room."""
    args = ["--pd-disaggregation", "--prefill", prefill_url, str(bootstrap_port), "--decode", decode_url]
    return _launch_router(args, 2, timeout, log_path)


def _launch_router(args: Sequence[str], workers: int, timeout: float, log_path: str | Path | None) -> Server:
    port = free_port()
    log_path = Path(log_path or tempfile.mkstemp(prefix=f"router-{port}-", suffix=".log")[1])
    log = open(log_path, "w")
    cmd = [sys.executable, "-m", "sglang_router.launch_router", "--host", "127.0.0.1", "--port", str(port), *args]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=launch_env(), start_new_session=True)
    router = Server(proc, port, log_path, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            router.stop()
            raise ServerFailed(f"router exited with {proc.returncode}:\n{router.log_text()[-4000:]}")
        try:
            listed = router.get("/workers", timeout=5).get("workers", [])
            if sum(1 for w in listed if w.get("is_healthy")) >= workers:
                return router
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            pass
        time.sleep(0.5)
    router.stop()
    raise ServerFailed(f"router did not register {workers} healthy workers in {timeout:.0f} s:\n"
                       f"{router.log_text()[-4000:]}")
