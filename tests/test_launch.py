"""The test/benchmark launcher survives a port taken between `free_port()` and the server's bind (servers
started side by side pick internal ports at random; SGLang's launcher then logs the bind error and hangs)."""

from __future__ import annotations

import socket

from raas_sglang.dev import launch


def test_port_taken_before_bind_is_retried(model_dir, tmp_path, monkeypatch):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        ports = iter([taken, launch.free_port()])
        monkeypatch.setattr(launch, "free_port", lambda: next(ports))
        logs = []
        real_once = launch._start_once

        def once(model, args, port, env, timeout, log_path):
            logs.append(port)
            return real_once(model, args, port, env, timeout, tmp_path / f"server-{port}.log")

        monkeypatch.setattr(launch, "_start_once", once)
        with launch.start_server(model_dir, ["--max-total-tokens", "2048"], timeout=240) as server:
            assert server.get("/get_model_info") is not None
    assert logs[0] == taken and logs[1] == server.port != taken
    assert launch.BIND_FAILED in (tmp_path / f"server-{taken}.log").read_text()
