"""Seam: prefill/decode disaggregation over mooncake on SGLang's CPU engine, for any policy (no CUDA device only).

Stock SGLang 0.5.23 runs a prefill server and a decode server on one CPU machine over loopback with
`--disaggregation-transfer-backend mooncake_tcp` (PyPI's `mooncake-transfer-engine-non-cuda`), except for one
CUDA-only call on the prefill side: `send_kv_chunk` stages a sender's page indices in pinned host memory and
records a `torch.cuda.Event` whenever the sender advertises `supports_host_tensor_indices`, which
`MooncakeKVSender` does. Without CUDA the sender here says it does not, so `send_kv_chunk` takes its plain
`kv_to_page_indices` path (the indices already live on the host).

Upstream symbols hooked (sglang 0.5.23):
- `sglang.srt.disaggregation.mooncake.conn.MooncakeKVSender.__init__`, AFTER (prefill scheduler processes; applied
  when that module is imported, so a server without mooncake never imports it): the instance attribute
  `supports_host_tensor_indices = False` when there is no CUDA device.
Read: `sglang.srt.disaggregation.prefill.SchedulerDisaggregationPrefillMixin.send_kv_chunk`, which tests
`getattr(sender, "supports_host_tensor_indices", False)`.
"""

from __future__ import annotations

from raas_sglang import cpu_env

MODULE = "sglang.srt.disaggregation.mooncake.conn"


def sender_init(result, self, *args, **kwargs):
    """AFTER: a sender on a machine without CUDA stages no page indices on a CUDA stream."""
    if not cpu_env.has_cuda():
        self.supports_host_tensor_indices = False
    return result


HOOKS = ((f"{MODULE}.MooncakeKVSender.__init__", sender_init, "AFTER"),)
