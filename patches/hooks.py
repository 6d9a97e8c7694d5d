"""Hooks that cannot fail silently: every hook the plugin registers is checked to be in place before the process
serves, and a process whose hooks did not all take stops, naming them.

SGLang's `HookRegistry.apply_hooks` only logs a target it cannot patch, and `load_plugins` only logs a plugin
whose `register()` raised; either way RaaS would then evict without the hooks that keep I1 (no double free) and
I2 (no evicted slot in the tree). So the plugin registers through `register` here, which remembers each
(target, hook), and wraps `apply_hooks` so that every call (SGLang's after `load_plugins`, and the lazy ones of
`patches/lazy.py`) ends with `verify()`: each remembered hook must sit in the wrapper chain now installed at its
target, else `HookNotApplied` is raised. A failed `register()` is re-raised the same way.

Upstream symbols used (sglang 0.5.23, `sglang/srt/plugins/hook_registry.py`): `HookRegistry.register(target,
hook, hook_type)`; `HookRegistry.apply_hooks` (a classmethod: wrapped here, not through the registry, which
cannot hook itself); the wrappers `_wrap_fn` builds (each holds its hook in a closure cell and the function it
wraps in `__wrapped__`); `pkgutil.resolve_name` semantics for targets.
"""

from __future__ import annotations

import pkgutil
from typing import Callable, Iterable

_EXPECTED: list[tuple[str, Callable]] = []
_FAILED: list[BaseException] = []
_INSTALLED = False


class HookNotApplied(RuntimeError):
    """Some RaaS hook is not in place: serving on would lose a guarantee, so the process stops."""


def register(hooks: Iterable[tuple[str, Callable, str]]) -> None:
    """Register `(target, hook, "BEFORE"|"AFTER"|"AROUND")` hooks with SGLang and remember them for `verify`."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    for target, fn, kind in hooks:
        HookRegistry.register(target, fn, HookType[kind])
        _EXPECTED.append((target, fn))


def plugin_failed(err: BaseException) -> None:
    """`register()` raised: every later `apply_hooks` raises too (SGLang would only log it)."""
    _FAILED.append(err)


def install() -> None:
    """Make every `HookRegistry.apply_hooks()` call end with `verify()` (idempotent)."""
    global _INSTALLED
    if _INSTALLED:
        return
    from sglang.srt.plugins.hook_registry import HookRegistry

    apply = HookRegistry.apply_hooks  # bound classmethod

    def apply_and_verify(cls):
        apply()
        verify()

    HookRegistry.apply_hooks = classmethod(apply_and_verify)
    _INSTALLED = True


def verify() -> int:
    """Raise `HookNotApplied` naming every remembered hook not in place; returns how many were checked."""
    if _FAILED:
        if isinstance(_FAILED[0], HookNotApplied):  # a lazy apply inside register() already found the gap
            raise _FAILED[0]
        raise HookNotApplied(f"raas_sglang: the plugin failed to register its hooks: {_FAILED[0]!r}; refusing to "
                             "serve without them") from _FAILED[0]
    missing = sorted({target for target, fn in _EXPECTED if not in_place(target, fn)})
    if missing:
        raise HookNotApplied(
            "raas_sglang: these SGLang hooks did not take (is this SGLang 0.5.23?): " + ", ".join(missing)
            + "; refusing to serve without them"
        )
    return len(_EXPECTED)


def in_place(target: str, fn: Callable) -> bool:
    """Whether `fn` is in the wrapper chain currently installed at `target` (module.attr or module.Class.attr)."""
    obj_path, attr = target.rsplit(".", 1)
    try:
        obj = pkgutil.resolve_name(obj_path)
    except (ImportError, AttributeError, ValueError):
        return False
    current = obj.__dict__.get(attr) if isinstance(obj, type) else getattr(obj, attr, None)
    current = getattr(current, "__func__", current)  # classmethod / staticmethod
    seen = 0
    while current is not None and seen < 64:
        cells = getattr(current, "__closure__", None) or ()
        if any(_cell(c) is fn for c in cells):
            return True
        current, seen = getattr(current, "__wrapped__", None), seen + 1
    return False


def _cell(cell) -> object:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell
        return None
