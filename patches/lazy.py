"""Apply hooks to a module when it is first imported, instead of importing it at plugin load.

SGLang's `HookRegistry.apply_hooks()` imports every hook target right after the plugins load — in the launcher
that is before argument parsing, so a target in a heavy module makes `--help` and every bad-flag refusal pay
for importing it. `when_imported` defers registration (and application) to the moment the module finishes
executing, or does it at once when the module is already loaded.

Hooks upstream: none (mechanism only).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import Callable

_PENDING: dict[str, list[Callable[[object], None]]] = {}


def when_imported(module: str, action: Callable[[object], None]) -> None:
    """Run `action(module_object)` once `module` is imported (now, if it already is)."""
    loaded = sys.modules.get(module)
    if loaded is not None:
        action(loaded)
        return
    _PENDING.setdefault(module, []).append(action)
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def register_hooks_when_imported(module: str, hooks) -> None:
    """Register `(target, fn, kind)` hooks with SGLang's registry once `module` is loaded, and apply them."""

    def apply(_):
        from sglang.srt.plugins.hook_registry import HookRegistry

        from raas_sglang.patches import hooks as verified

        verified.register(hooks)
        HookRegistry.apply_hooks()  # NOTE: wrapped by patches/hooks.py: raises if a hook did not take

    when_imported(module, apply)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in _PENDING:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is not None and spec.loader is not None:
            spec.loader = _RunAfterExec(spec.loader, _PENDING.pop(name))
        return spec


class _RunAfterExec(importlib.abc.Loader):
    def __init__(self, inner, actions):
        self.inner, self.actions = inner, actions

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        for action in self.actions:
            action(module)
