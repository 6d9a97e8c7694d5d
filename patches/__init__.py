"""The plugin entry point: `register()` is listed under SGLang's `sglang.srt.plugins` entry-point group.

SGLang calls it (through `sglang.srt.plugins.load_plugins`) in the launcher before argument parsing and again in
every child process (scheduler, detokenizer, DP controller, `sgl.Engine`). It registers the hooks of each seam
module with SGLang's `HookRegistry`; SGLang applies them right after all plugins have run.

Seams (one module each; each names the upstream symbols it hooks):
- `server_args`: the RaaS flags, validation, `sgl.Engine(kv_policy=...)`.
"""

from __future__ import annotations

import logging
import multiprocessing

logger = logging.getLogger("raas_sglang")

_registered = False


def register() -> None:
    """Register every RaaS hook. Idempotent."""
    global _registered
    if _registered:
        return
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from raas_sglang.patches import server_args

    for target, fn, kind in server_args.HOOKS:
        HookRegistry.register(target, fn, HookType[kind])
    if multiprocessing.parent_process() is None:
        # Only the launching process builds ServerArgs from Engine keywords; children get the pickled record.
        server_args.install_engine_factory()
    _registered = True
