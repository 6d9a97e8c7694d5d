"""Seam: RaaS under tensor parallel. Every TP rank takes the same eviction decisions.

Each TP rank runs its own scheduler, allocator and radix tree, and SGLang relies on them taking identical
decisions. A rank sees only its shard of attention heads, so its page scores are partial: `Ranks.combine`
all-reduces them over SGLang's TP group once per decode step (`raas_sglang.step.PageScores.finish`), after which
every rank holds the same scores and, from the same state, takes the same decisions.

The debug check (`RAAS_CHECK_RANKS=1`, on in the tests) proves it: once per decode step, after the step's
evictions and allocation, each rank hashes its RaaS state, the batch and SGLang's own pool counts, and the ranks
compare digests over the TP group's CPU (gloo) group; on any difference every rank raises `RanksDisagree`, which
stops the server (SGLang's scheduler treats an exception in its loop as fatal).

Ranks also agree on their settings before serving (`check_settings_agree`, always on at tp > 1, dense included):
each rank's `RaasConfig`, its policy registry (names in id order, from `RAAS_POLICY_MODULES` and entry points),
whether its per-step check is on (`RAAS_CHECK_RANKS`) and its verdict on the loaded model are decided per process
(each node of a `--nnodes` launch parses its own flags and environment), so ranks that differ would take
different decisions or call different collectives (and hang); instead every rank stops at startup.

Upstream symbols used (sglang 0.5.23, `sglang/srt/distributed/parallel_state.py`): `get_tp_group()` -> the
`GroupCoordinator` with `world_size`, `rank_in_group`, `device_group` (gloo on CPU, NCCL on CUDA) and
`cpu_group` (gloo); `torch.distributed.all_reduce` / `all_gather` on those groups. Hooks upstream: none (the
`schedule` seam calls `check_ranks_agree`, the runtime calls `combine`).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch

CHECK_ENV = "RAAS_CHECK_RANKS"


class RanksDisagree(RuntimeError):
    """Two TP ranks hold different RaaS state: their allocators and trees would drift apart, so the server stops."""


class Ranks:
    """This process's place in SGLang's TP group (size 1 without tensor parallel)."""

    def __init__(self, group: Any | None):
        self.group = group
        self.size = 1 if group is None else int(group.world_size)
        self.rank = 0 if group is None else int(group.rank_in_group)
        self.check = self.size > 1 and os.environ.get(CHECK_ENV, "") not in ("", "0")
        self.checked_steps = 0

    @classmethod
    def of_process(cls, tp_size: int) -> "Ranks":
        if tp_size <= 1:
            return cls(None)
        from sglang.srt.distributed import get_tp_group

        return cls(get_tp_group())

    def combine(self, t: torch.Tensor, op: str) -> None:
        """All-reduce `t` in place over the TP ranks: op "sum" or "max"."""
        reduce_op = torch.distributed.ReduceOp.MAX if op == "max" else torch.distributed.ReduceOp.SUM
        torch.distributed.all_reduce(t, op=reduce_op, group=self.group.device_group)

    def agree(self, digest: int, what: str) -> None:
        """Compare this rank's `digest` with every other rank's; raise `RanksDisagree` naming them if any differs."""
        mine = torch.tensor([digest], dtype=torch.int64)
        every = [torch.zeros_like(mine) for _ in range(self.size)]
        torch.distributed.all_gather(every, mine, group=self.group.cpu_group)
        values = [int(t) for t in every]
        self.checked_steps += 1
        if len(set(values)) > 1:
            shown = ", ".join(f"rank {r}: {v & 0xFFFFFFFF:08x}" for r, v in enumerate(values))
            raise RanksDisagree(f"raas_sglang: TP ranks disagree on the RaaS {what} ({shown}); stopping: "
                                "their allocators and radix trees would drift apart")


def state_digest(rt: Any, batch: Any) -> int:
    """A 64-bit hash of what this rank's decisions read and changed: the RaaS state of every row, the batch's
    rows and lengths, and SGLang's free and evictable token counts."""
    h = hashlib.blake2b(digest_size=8)
    st = rt.state
    for t in (st.pages, st.stamp, st.score, st.policy, st.count, st.pin_len, st.step, st.evicted, st.limit,
              batch.req_pool_indices, batch.seq_lens):
        h.update(t.detach().to("cpu").contiguous().numpy().tobytes())
    counts = (batch.token_to_kv_pool_allocator.available_size(), batch.tree_cache.evictable_size(),
              rt.totals.evicted_pages)
    h.update(repr(counts).encode())
    return int.from_bytes(h.digest(), "little", signed=True)


def settings_digest(config: Any, ranks: Ranks, refused: str | None) -> int:
    """A 64-bit hash of what every rank must share before serving: its RaaS config, policy registry, whether the
    per-step check runs, and its verdict on the loaded model."""
    from raas_sglang.policies import REGISTRY

    h = hashlib.blake2b(digest_size=8)
    h.update(repr((sorted(config.to_dict().items()), list(REGISTRY), ranks.check, refused)).encode())
    return int.from_bytes(h.digest(), "little", signed=True)


def check_settings_agree(config: Any, tp_size: int, refused: str | None) -> None:
    """Once per rank, before serving (a no-op at tp 1): the ranks' settings digests must be equal, else every
    rank raises `RanksDisagree`."""
    from raas_sglang.policies import REGISTRY

    ranks = Ranks.of_process(tp_size)
    if ranks.size > 1:
        mine = (f"rank {ranks.rank}: --kv-policy {config.policy}, policies {', '.join(REGISTRY)}, {CHECK_ENV} "
                f"{'on' if ranks.check else 'off'}, model {'refused' if refused else 'accepted'}")
        ranks.agree(settings_digest(config, ranks, refused), f"settings at startup ({mine}; were the nodes started "
                    "with different flags or RAAS_* environments?)")


def check_ranks_agree(rt: Any, batch: Any) -> None:
    """The debug check, once per decode step (a no-op unless `RAAS_CHECK_RANKS` is set and tp > 1)."""
    ranks = rt.ranks
    if ranks.check:
        ranks.agree(state_digest(rt, batch), f"state after decode step {rt.totals.decode_steps}")
