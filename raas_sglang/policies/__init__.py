"""KV policies behind one interface (`base.Policy`), one file each, the registry, and the per-server set.

A request's policy is its server's `--kv-policy` or its `custom_params.kv_policy`. "dense" is not a policy
class: a dense row is served as stock (everything pinned, nothing evicted) and has its own id, `DENSE_ID` (0),
which is also what a released row reads as.

Adding a policy: one file whose `Policy` subclass is decorated with `@register`. Built-in policies are imported
below; others are found in every SGLang process (launcher, scheduler) from
- the entry-point group `raas_sglang.policies` (an installed package: `name = "module:Class"`), and
- `RAAS_POLICY_MODULES`: module names or `.py` file paths, separated by the OS path separator (set it in the
  server's environment; child processes inherit it).
NOTE: every process must see the same set, in the same order (ids follow `REGISTRY` order): external policies are
loaded sorted by name, after the built-ins, when this package is first imported.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from importlib.metadata import entry_points
from typing import Any, Iterable

import numpy as np
import torch

from raas_sglang.policies.base import EMPTY, Policy, rank_desc

DENSE = "dense"
DENSE_ID = 0
ENV_MODULES = "RAAS_POLICY_MODULES"
ENTRY_POINT_GROUP = "raas_sglang.policies"

REGISTRY: dict[str, type[Policy]] = {}


def register(cls: type[Policy]) -> type[Policy]:
    """Class decorator: make `cls` selectable by its `name` (`--kv-policy NAME`, `custom_params.kv_policy`)."""
    if not cls.name or cls.name == DENSE or any(c in cls.name for c in ", "):
        raise ValueError(f"policy name must be a non-empty word other than {DENSE!r}, got {cls.name!r}")
    if REGISTRY.get(cls.name, cls) is not cls:
        raise ValueError(f"policy {cls.name!r} is registered twice ({REGISTRY[cls.name]} and {cls})")
    REGISTRY[cls.name] = cls
    return cls


class PolicySet:
    """The policy instances one server runs (one per registered policy, parameters from its config), and their
    ids in `RaasState.policy`: `DENSE_ID` for dense rows, 1.. in registry order."""

    def __init__(self, policies: Iterable[Policy]):
        self.by_id: list[Policy | None] = [None, *policies]
        self.ids = {DENSE: DENSE_ID, **{p.name: i for i, p in enumerate(self.by_id) if p is not None}}

    @classmethod
    def from_config(cls, config: Any = None) -> "PolicySet":
        """Every registered policy, with `config`'s parameters (None: each policy's defaults)."""
        return cls(c() if config is None else c.from_config(config) for c in REGISTRY.values())

    def __getitem__(self, name: str) -> Policy:
        return self.by_id[self.ids[name]]

    def in_batch(self, policy_ids: torch.Tensor, present: np.ndarray | None = None) -> list[tuple[Policy, torch.Tensor]]:
        """(policy, mask [n] bool) for each policy some rows run (dense rows are left out). policy_ids [n] int64;
        present: the same ids on the host (`HostMirror.policy`), else counted on the device (one sync)."""
        if present is not None:
            counts = np.bincount(present, minlength=len(self.by_id))
        else:
            counts = torch.bincount(policy_ids, minlength=len(self.by_id)).tolist()
        return [(p, policy_ids == i) for i, p in enumerate(self.by_id) if p is not None and counts[i]]

    def groups(self, present: np.ndarray) -> list[tuple[Policy, np.ndarray | None]]:
        """(policy, row indices [m] int64, or None when every row runs it) for each policy in a batch whose rows'
        ids are `present` [n] int64 (host); dense rows are left out."""
        found = np.unique(present)
        if len(found) == 1:
            p = self.by_id[int(found[0])]
            return [] if p is None else [(p, None)]
        return [(self.by_id[int(i)], np.flatnonzero(present == i)) for i in found if self.by_id[int(i)] is not None]


def _load_external() -> None:
    """Import the policies named by the entry-point group and `RAAS_POLICY_MODULES` (they `@register`)."""
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        ep.load()
    for item in sorted(filter(None, os.environ.get(ENV_MODULES, "").split(os.pathsep))):
        if item.endswith(".py"):
            name = "raas_sglang_policy_" + os.path.splitext(os.path.basename(item))[0]
            spec = importlib.util.spec_from_file_location(name, item)
            if spec is None or spec.loader is None:
                raise ImportError(f"{ENV_MODULES}: cannot load {item!r}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            importlib.import_module(item)


# the built-ins, in id order (they register on import)
from raas_sglang.policies import raas, streaming, h2o, quest, raas_quest  # noqa: E402,F401

_load_external()

__all__ = ["DENSE", "DENSE_ID", "EMPTY", "Policy", "PolicySet", "REGISTRY", "rank_desc", "register"]
