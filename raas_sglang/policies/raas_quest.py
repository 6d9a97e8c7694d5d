"""RaaS + Quest: RaaS for the decode pages (physically evicted by "last attended"), and Quest selection over the
pinned prompt pages: at every layer the request attends to the budget's number of prompt pages with the highest
Quest bound, so a long prompt stops eating the attention budget (the fix RaaS's paper proposes but did not
build). The prompt stays allocated (the radix tree shares it)."""

from __future__ import annotations

from raas_sglang.policies import register
from raas_sglang.policies.raas import Raas


@register
class RaasQuest(Raas):
    name = "raas+quest"
    selects = "prompt"  # candidates: the pinned prompt pages
