"""A throwaway policy, registered from this one file (tests/test_policy_plugin.py serves it through a real
server with `RAAS_POLICY_MODULES` pointing here): "lifo" keeps the oldest decode pages and evicts the newest
candidate (the core never offers the newest resident page, so: the page before it). Not a good policy; a small, checkable one."""

from __future__ import annotations

from raas_sglang.policies import Policy, register


@register
class Lifo(Policy):
    name = "lifo"

    def victim_key(self, state, rows, pages):
        return -pages.double()  # the highest (newest) candidate page first; the core never offers the newest
