"""Pure-torch stand-in for the CPU build of sgl-kernel (which is not published on PyPI).

With `SGLANG_USE_CPU_ENGINE=1`, SGLang 0.5.23 imports a few `sgl_kernel.*_cpu` functions at module level.
This module is put first on `PYTHONPATH` by `raas_sglang.cpu_env` ONLY when the machine has no CUDA device,
so it never shadows the real `sgl_kernel` on a GPU machine.

- `assign_req_to_token_pool_cpu` is implemented (it runs on every extend).
- Everything else the CPU engine may import (KV copy by raw data pointers, speculative-decoding ops) raises a
  clear error when called: those features are not supported on the CPU engine here.
- `torch.ops.sgl_kernel` stays empty, so `cpu_has_amx_support()` is False and every layer takes its native
  torch path.
"""

from __future__ import annotations

import torch

__version__ = "0.0.0+raas-cpu-stand-in"
RAAS_CPU_STAND_IN = True


def assign_req_to_token_pool_cpu(
    req_pool_indices: torch.Tensor,  # [bs] int
    req_to_token: torch.Tensor,  # [pool_rows, max_context_len] int32
    start_offset: torch.Tensor,  # [bs] int
    end_offset: torch.Tensor,  # [bs] int
    out_cache_loc: torch.Tensor,  # [sum(end - start)] int
    pool_len: int,
) -> None:
    """Write each request's new KV slots into its row: `req_to_token[row, start:end] = out_cache_loc[...]`.

    Same semantics as the Triton kernel `assign_req_to_token_pool` in `sglang/srt/mem_cache/allocation.py`:
    request i takes the i-th consecutive chunk of `out_cache_loc`, of length `end[i] - start[i]`.
    """
    del pool_len  # the row stride; torch indexing knows it
    starts = start_offset.tolist()
    ends = end_offset.tolist()
    rows = req_pool_indices.tolist()
    offset = 0
    for row, start, end in zip(rows, starts, ends):
        n = end - start
        if n > 0:
            req_to_token[row, start:end] = out_cache_loc[offset : offset + n].to(req_to_token.dtype)
        offset += n


def _unsupported(name: str):
    def fail(*args, **kwargs):
        raise NotImplementedError(
            f"sgl_kernel.{name} is not available: raas_sglang's CPU stand-in for sgl-kernel implements only "
            f"assign_req_to_token_pool_cpu (this SGLang feature needs the real CPU build of sgl-kernel)"
        )

    fail.__name__ = name
    return fail


_UNSUPPORTED = (
    "copy_all_layer_kv_cache_cpu",
    "rotate_input_ids_cpu",
    "fill_accept_out_cache_loc_cpu",
    "fill_bonus_tokens_cpu",
    "assign_draft_cache_locs_contiguous_cpu",
    "assign_extend_cache_locs_cpu",
    "build_draft_decode_metadata_cpu",
    "build_tree_kernel_efficient_cpu",
    "verify_tree_greedy_cpu",
)
for _name in _UNSUPPORTED:
    globals()[_name] = _unsupported(_name)
del _name
