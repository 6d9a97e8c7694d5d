"""Seam: several ranks (tensor/pipeline/data parallel, several nodes) on SGLang's CPU engine, for any policy.

Stock SGLang 0.5.23 cannot start more than one rank per NUMA node on a machine without CUDA; two things stop it,
and this seam supplies both, only when there is no CUDA device (`raas_sglang.cpu_env.has_cuda`):

- the launcher asserts dp*tp*pp <= NUMA nodes unless `SGLANG_CPU_OMP_THREADS_BIND` names each rank's cores:
  `bind_threads(server_args)` (called by the `server_args` seam once the args are parsed, in the launcher, before
  any scheduler process starts) sets it from this launch's ranks per node (`cpu_env.threads_bind`), unless the
  user set it; a single-rank server gets nothing, so it keeps every core;
- `init_model_parallel_group` builds a PyNccl communicator unless told not to, and on CPU that raises "Expected a
  cuda device, but got: cpu": the hook passes `use_pynccl=False`, so collectives go through
  `torch.distributed` over gloo (the shared-memory all-reduce needs the CPU build of sgl-kernel, which is not
  published).

Upstream symbols hooked (sglang 0.5.23):
- `sglang.srt.distributed.parallel_state.init_model_parallel_group(group_ranks, local_rank, backend, use_pynccl=None,
  ...)`, AROUND (scheduler processes; every caller is in that module and calls it through the module global).
Read: `ServerArgs.{device, tp_size, pp_size, dp_size, nnodes, base_gpu_id, gpu_id_step}`; the variable
`SGLANG_CPU_OMP_THREADS_BIND` read by `sglang.srt.utils.numa_utils.init_threads_binding` (index = gpu_id).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from raas_sglang import cpu_env
from raas_sglang.refusals import arg

logger = logging.getLogger("raas_sglang")


def world_size(server_args: Any) -> int:
    """dp*tp*pp: the ranks of the whole launch, over all nodes (what SGLang's NUMA assertion counts)."""
    return (arg(server_args, "dp_size") or 1) * (arg(server_args, "tp_size") or 1) * (arg(server_args, "pp_size") or 1)


def local_rank_ids(server_args: Any) -> list[int]:
    """The gpu_ids (= `SGLANG_CPU_OMP_THREADS_BIND` indices) of this node's ranks, as SGLang assigns them:
    `engine._calculate_rank_ranges` splits tp and pp over the nodes, each rank's id is base + (pp_rank % pp per
    node) * tp per node + (tp_rank % tp per node) * step, and the DP controller moves each replica's base by
    tp * pp * step."""
    dp, tp, pp = (arg(server_args, k) or 1 for k in ("dp_size", "tp_size", "pp_size"))
    nnodes = max(1, arg(server_args, "nnodes") or 1)
    base, step = arg(server_args, "base_gpu_id") or 0, arg(server_args, "gpu_id_step") or 1
    pp_per_node = max(pp // nnodes, 1)
    tp_per_node = max(tp // max(nnodes // pp, 1), 1)
    return sorted({base + d * tp * pp * step + p * tp_per_node + t * step
                   for d in range(dp) for p in range(pp_per_node) for t in range(tp_per_node)})


_SET_BY_PLUGIN: str | None = None  # the value this process set (an in-process sgl.Engine launches again later)


def bind_threads(server_args: Any) -> str | None:
    """Set `SGLANG_CPU_OMP_THREADS_BIND` for this launch when the CPU engine runs more than one rank in all and the
    user did not set it (a node with one of them gets all the cores). Returns the value set (None: nothing set)."""
    global _SET_BY_PLUGIN
    current = os.environ.get(cpu_env.BIND_ENV)
    if current and current != _SET_BY_PLUGIN:
        return None  # the user's
    if current:
        del os.environ[cpu_env.BIND_ENV]
        _SET_BY_PLUGIN = None
    device = arg(server_args, "device")
    if str(device) not in ("cpu", "None") or cpu_env.has_cuda() or world_size(server_args) <= 1:
        return None
    value = cpu_env.threads_bind_ids(local_rank_ids(server_args))
    os.environ[cpu_env.BIND_ENV] = _SET_BY_PLUGIN = value
    logger.info("raas_sglang: %s=%s (CPU engine, one entry per rank on this node)", cpu_env.BIND_ENV, value)
    return value


def init_model_parallel_group(orig, *args, **kwargs):
    """AROUND: no PyNccl communicator on a machine without CUDA (collectives go through gloo)."""
    if kwargs.get("use_pynccl") is None and len(args) < 4 and not cpu_env.has_cuda():
        kwargs["use_pynccl"] = False
    return orig(*args, **kwargs)


HOOKS = (
    ("sglang.srt.distributed.parallel_state.init_model_parallel_group", init_model_parallel_group, "AROUND"),
)
