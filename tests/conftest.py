"""Shared fixtures: the tiny model, servers shared per test module, and a plugin-presence guard."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # The kernel tests run under the Triton interpreter on CPU. It must be on before anything imports
    # triton.language (transformers and sglang do, at collection time). Servers never inherit it
    # (raas_sglang.cpu_env.launch_env drops it unless asked).
    os.environ.setdefault("TRITON_INTERPRET", "1")

from raas_sglang.dev import tiny_model
from raas_sglang.cpu_env import has_cuda
from raas_sglang.dev.launch import STRICT_KV_CHECKS, Server, start_server

REPO = Path(__file__).resolve().parent.parent
# NOTE: an idle SGLang scheduler polls without sleeping (a whole core) unless `--sleep-on-idle`; on a 2-core
# machine a server waiting between two tests would halve the speed of everything else
SMALL_POOL = ("--max-total-tokens", "4096", "--mem-fraction-static", "0.5", "--sleep-on-idle")
STRICT_ENV = STRICT_KV_CHECKS


def pytest_configure(config):
    if os.environ.get("RAAS_KERNELS_ONLY"):  # bench/gpu_check.sh: kernels only, SGLang may not be installed
        return
    names = {ep.name: ep.value for ep in entry_points(group="sglang.srt.plugins")}
    if names.get("raas") != "raas_sglang.patches:register":
        raise pytest.UsageError(
            f"the raas plugin is not registered with SGLang (entry points: {names}); run `make test`, which "
            f"installs the project into .venv"
        )


def pytest_collection_modifyitems(config, items):
    if has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return tiny_model.build()


def serve(model_dir: Path, *args: str, tmp: Path, env: dict | None = None) -> Server:
    """Start a server with the tests' defaults (small pool, CPU flags added by the launcher)."""
    return start_server(model_dir, [*SMALL_POOL, *args], log_path=tmp / "server.log", env=env)


def serve_all(model_dir: Path, specs: dict[str, tuple[tuple, Path, dict | None]]) -> dict[str, Server]:
    """Start servers side by side (each start is ~25 s of mostly imports): name -> (flags, log folder, env).
    If one fails, the others are stopped before the error propagates (a module fixture that raises before its
    `yield` never runs its teardown, and a server left running would slow every later test)."""
    with ThreadPoolExecutor(len(specs)) as pool:
        futures = {name: pool.submit(serve, model_dir, *args, tmp=tmp, env=env) for name, (args, tmp, env) in specs.items()}
    started, error = {}, None
    for name, future in futures.items():
        try:
            started[name] = future.result()
        except Exception as err:  # noqa: BLE001 - re-raised below, after cleanup
            error = error or err
    if error is not None:
        for server in started.values():
            server.stop()
        raise error
    return started


# The one RaaS server most modules share (each server start costs ~25 s of imports on 2 cores): page 16, server
# budget 256, radix cache on, chunked prefill at 128 tokens (so long prompts take the chunk-checkpoint path),
# SGLang's strict KV checks, the throwaway test policy "lifo" (tests/policy_lifo.py) available per request, and the
# test-only failpoints `lost_page` and `skip_tokenizer_check`, inert for every request not marked for them.
RAAS_SERVER_ARGS = ("--kv-policy", "raas", "--raas-budget", "256", "--chunked-prefill-size", "128")
LIFO_POLICY_FILE = REPO / "tests" / "policy_lifo.py"


@pytest.fixture(scope="session")
def raas_server(model_dir, tmp_path_factory):
    """A shared `--kv-policy raas` server (see RAAS_SERVER_ARGS). Tests must leave it idle and leak-free."""
    # the `lost_page` failpoint touches only requests whose id starts with `raas-test-lost`, `skip_tokenizer_check`
    # only requests whose custom_params mark it (patches/failpoints.py)
    env = {**STRICT_ENV, "RAAS_POLICY_MODULES": str(LIFO_POLICY_FILE),
           "RAAS_TEST_FAULT": "lost_page,skip_tokenizer_check"}
    srv = serve(model_dir, *RAAS_SERVER_ARGS, tmp=tmp_path_factory.mktemp("raas_shared"), env=env)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def hf(model_dir):
    """The tiny model in Hugging Face transformers (float32, eval): the independent reference."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
