"""KV policies behind one interface (`base.Policy`), one file each, and the registry the core dispatches on.

A request's policy is its server's `--kv-policy` or its `custom_params.kv_policy`; "dense" is not a policy
here (a dense row is served as stock: everything pinned, nothing evicted).
"""

from __future__ import annotations

from raas_sglang.policies.base import Policy
from raas_sglang.policies.h2o import H2O
from raas_sglang.policies.quest import Quest
from raas_sglang.policies.raas import Raas
from raas_sglang.policies.raas_quest import RaasQuest
from raas_sglang.policies.streaming import Streaming

REGISTRY: dict[str, Policy] = {p.name: p for p in (Raas(), Streaming(), H2O(), Quest(), RaasQuest())}
IDS: dict[str, int] = {name: i for i, name in enumerate(REGISTRY)}
