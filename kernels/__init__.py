"""Triton kernels for the RaaS decode hot path, each with a torch reference beside it.

- `sparse_decode`: decode attention over each row's resident pages (read from the RaaS state), emitting per-page
  attention mass (the triton backend's `--raas-score exact` path).
- `sm90_check`: ahead-of-time sm_90 compile checks (registers, spills, SASS) on a machine without a GPU.

Quest page bounds and scores run in torch (`raas_sglang.scoring`): the per-layer work is one gather and one
batched matmul, so no Triton kernel of our own is used for them (two earlier ones were never wired in and were
removed).

Imports neither SGLang nor the policy core. On a machine without CUDA, run them under `TRITON_INTERPRET=1`
(set before `triton` is imported) in float32.
"""
