"""Triton kernels for the RaaS decode hot path, each with a torch reference beside it.

- `page_bounds`: fold new keys into per-page key min/max (Quest metadata).
- `page_scores`: Quest upper-bound scores of each request's resident decode pages (ragged).
- `sparse_decode`: decode attention over a compacted resident slot list, emitting per-page attention mass.

Imports neither SGLang nor the policy core. On a machine without CUDA, run them under `TRITON_INTERPRET=1`
(set before `triton` is imported) in float32.
"""
