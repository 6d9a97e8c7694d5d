"""Seam: prefill/decode disaggregation over mooncake on SGLang's CPU engine, for any policy (no CUDA device only).

Stock SGLang 0.5.23 runs a prefill server and a decode server on one CPU machine over loopback with
`--disaggregation-transfer-backend mooncake_tcp` (PyPI's `mooncake-transfer-engine-non-cuda`), except for two
CUDA-only calls on the prefill side, which this seam avoids when there is no CUDA device:
- `send_kv_chunk` stages a sender's page indices in pinned host memory and records a `torch.cuda.Event` whenever the
  sender advertises `supports_host_tensor_indices`, which `MooncakeKVSender` does. Here the sender says it does
  not, so `send_kv_chunk` takes its plain `kv_to_page_indices` path (the indices already live on the host).
- `maybe_send_cached_prefix_chunk` (a radix hit: the cached prefix is sent before the forward) records a
  `torch.cuda.Event` on the forward stream under the overlap scheduler, so that the transfer waits for the
  previous step's forward to finish writing those pages. The CPU engine runs each forward to completion before the
  scheduler goes on, so there is nothing to wait for: the call runs as without overlap.

Upstream symbols hooked (sglang 0.5.23):
- `sglang.srt.disaggregation.mooncake.conn.MooncakeKVSender.__init__`, AFTER (applied when that module is imported,
  so a server without mooncake never imports it): the instance attribute `supports_host_tensor_indices = False`.
- `sglang.srt.disaggregation.prefill.SchedulerDisaggregationPrefillMixin.maybe_send_cached_prefix_chunk(self, req,
  allow_send=True)`, AROUND: `self.enable_overlap` reads False for the duration of the call (only that method's
  event creation reads it; `send_kv_chunk`, which it calls, does not).
"""

from __future__ import annotations

from raas_sglang import cpu_env

MODULE = "sglang.srt.disaggregation.mooncake.conn"


def sender_init(result, self, *args, **kwargs):
    """AFTER: a sender on a machine without CUDA stages no page indices on a CUDA stream."""
    if not cpu_env.has_cuda():
        self.supports_host_tensor_indices = False
    return result


def send_cached_prefix_chunk(orig, self, req, *args, **kwargs):
    """AROUND: no CUDA event for the cached prefix's early send on the CPU engine."""
    if cpu_env.has_cuda() or not self.enable_overlap:
        return orig(self, req, *args, **kwargs)
    self.enable_overlap = False
    try:
        return orig(self, req, *args, **kwargs)
    finally:
        self.enable_overlap = True


MOONCAKE_HOOKS = ((f"{MODULE}.MooncakeKVSender.__init__", sender_init, "AFTER"),)
HOOKS = (("sglang.srt.disaggregation.prefill.SchedulerDisaggregationPrefillMixin.maybe_send_cached_prefix_chunk",
          send_cached_prefix_chunk, "AROUND"),)
