"""Faults: SIGTERM to the server while a RaaS request decodes ends the server and every child process (scheduler,
detokenizer) within 30 s, as `kill PID` or a container stop would. (Retraction faults: tests/test_raas_retraction.py.)"""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time

import psutil

from raas_sglang.dev import tiny_model
from raas_sglang.dev.launch import start_server


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_sigterm_during_decode_ends_server_and_children(tmp_path):
    server = start_server(tiny_model.build(), ["--kv-policy", "raas", "--raas-budget", "32", "--page-size", "16",
                                               "--max-total-tokens", "4096"], log_path=tmp_path / "server.log")
    try:
        family = [psutil.Process(server.proc.pid), *psutil.Process(server.proc.pid).children(recursive=True)]
        assert len(family) >= 3, "expected the launcher, the scheduler and the detokenizer"
        chunks, started = [], threading.Event()

        def stream():  # a long decode with evictions, read chunk by chunk until the server goes away
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            body = {"input_ids": [1] + list(range(3, 40)), "stream": True,
                    "sampling_params": {"max_new_tokens": 3000, "ignore_eos": True, "temperature": 0}}
            try:
                conn.request("POST", "/generate", json.dumps(body), {"Content-Type": "application/json"})
                for line in conn.getresponse():
                    if line.startswith(b"data:"):
                        chunks.append(line)
                        if len(chunks) >= 64:
                            started.set()
            except (OSError, http.client.HTTPException):
                pass
            finally:
                started.set()
                conn.close()

        client = threading.Thread(target=stream, daemon=True)
        client.start()
        assert started.wait(120) and len(chunks) >= 64, "the decode did not get going"
        t0 = time.monotonic()
        os.kill(server.proc.pid, signal.SIGTERM)  # the launcher only, not the group: it must take its children down
        while _alive(family) and time.monotonic() - t0 < 30:
            time.sleep(0.2)
        left = _alive(family)
        assert not left, f"still running 30 s after SIGTERM: {[(p.pid, p.name()) for p in left]}"
        assert server.proc.wait(5) is not None
        client.join(10)
        assert len(chunks) < 3000, "the request finished before the SIGTERM; the fault was not during decode"
    finally:
        server.stop()
