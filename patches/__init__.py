"""The plugin entry point: `register()` is listed under SGLang's `sglang.srt.plugins` entry-point group.

SGLang calls it (through `sglang.srt.plugins.load_plugins`) in the launcher before argument parsing and again in
every child process (scheduler, detokenizer, DP controller, `sgl.Engine`). It registers the hooks of each seam
module with SGLang's `HookRegistry`; SGLang applies them right after all plugins have run.

Seams (one module each; each names the upstream symbols it hooks):
- `server_args`: the RaaS flags and their validation, `sgl.Engine(kv_policy=...)`, the config on each record.
- `overlap`: the overlap scheduler turned off under RaaS.
- `startup_checks`: the startup refusals of the registry in `raas_sglang/refusals.py`, once the args are resolved.
- `model_checks`: the loaded-model refusals, from what SGLang built (layers, KV pool, allocator), before serving.
- `requests`: each request's RaaS fields checked again where the scheduler takes it (a bad one is aborted).
- `schedule`: eviction before each decode step's KV allocation; the decode memory check.
- `pool_sizing`: the KV pool is shrunk by the Quest page key bounds' size when they are kept.
- `admission`: prefill admission reserves at most prompt + L pages + one page for a RaaS request.
- `attention`: the torch-native backend reads resident tokens only; page key bounds and page scores.
- `attention_triton`, `attention_flashinfer`: the same resident set as kv_indptr/kv_indices for those backends.
- `mla_torch_native`: an MLA model on torch_native prefills through the absorbed path (stock cannot prefill it).
- `radix`: hole-aware radix inserts, row frees and pool accounting.
- `swa_pool`: the hybrid sliding-window pool (gpt-oss): SGLang's window sweep steps over holes; SWA accounting.
- `api`: per-request validation (HTTP 400), `meta_info["raas"]`, `/get_server_info`, metrics, the decode log.
- `cpu_parallel`: several ranks on SGLang's CPU engine (thread binding per rank, no PyNccl), any policy.
- `disaggregation`: a RaaS decode server of PD disaggregation resumes a retracted request within its bound.
- `cpu_disaggregation`: the prefill side of mooncake PD disaggregation on the CPU engine, any policy.
- `hooks` (no hooks): registers the others and stops the process if any did not take.
- `runtime` (no hooks): the per-scheduler-process state those seams share; `eviction` (no hooks): the frees.
- `failpoints` (no hooks; test-only): fault injection behind `RAAS_TEST_FAULT`.
"""

from __future__ import annotations

import logging
import multiprocessing

logger = logging.getLogger("raas_sglang")

_registered = False


def register() -> None:
    """Register every RaaS hook. Idempotent.

    NOTE: the launching process (CLI launcher or the `sgl.Engine` caller) parses flags and hosts the tokenizer
    manager; the scheduler, model runner and attention backend live in child processes. Each process gets only
    the hooks it uses, and the launcher's hooks on heavy modules are applied when those modules are imported,
    so `--help` and bad-flag refusals stay as fast as stock.
    """
    global _registered
    if _registered:
        return
    from raas_sglang.patches import hooks

    hooks.install()  # first: from here on, SGLang's apply_hooks() verifies every hook registered below
    try:
        _register_all(hooks)
    except BaseException as err:  # SGLang's load_plugins only logs this; the next apply_hooks() raises it
        hooks.plugin_failed(err)
        raise
    _registered = True


def _register_all(hooks) -> None:
    from raas_sglang.patches import (
        admission, api, attention, attention_flashinfer, attention_triton, cpu_disaggregation, cpu_parallel,
        disaggregation, failpoints, mla_torch_native, model_checks, overlap, pool_sizing, radix, reprefill,
        reprefill_attention, requests, schedule, server_args, startup_checks, swa_pool,
    )
    from raas_sglang.patches.lazy import register_hooks_when_imported

    for module in (server_args, overlap, startup_checks):
        hooks.register(module.HOOKS)
    if multiprocessing.parent_process() is None:
        server_args.install_engine_factory()
        failpoints.install(tokenizer_side=True)  # test-only: a no-op unless RAAS_TEST_FAULT names such a fault
        for module, module_hooks in api.MAIN_HOOKS.items():
            register_hooks_when_imported(module, module_hooks)
    else:
        for module in (cpu_parallel, pool_sizing, model_checks, requests, schedule, admission, attention, radix,
                       swa_pool, reprefill, reprefill_attention, disaggregation, cpu_disaggregation):
            hooks.register(module.HOOKS)
        failpoints.install()  # test-only: a no-op unless RAAS_TEST_FAULT is set
        hooks.register(api.SCHEDULER_HOOKS)
        # imported only by servers that use them; NOTE: hooks on one target must be applied in one call (SGLang's
        # registry patches a target once), so triton's own and the re-prefill's go together
        register_hooks_when_imported(attention_triton.MODULE, attention_triton.HOOKS + reprefill_attention.TRITON_HOOKS)
        register_hooks_when_imported(attention_flashinfer.MODULE, attention_flashinfer.HOOKS)
        register_hooks_when_imported(cpu_disaggregation.MODULE, cpu_disaggregation.MOONCAKE_HOOKS)
        register_hooks_when_imported(mla_torch_native.MODULE, mla_torch_native.HOOKS)
