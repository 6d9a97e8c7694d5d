"""Seam: what users see — per-request validation (HTTP 400), `meta_info["raas"]`, `/get_server_info`, metrics,
and the decode log line.

Upstream symbols hooked (sglang 0.5.23). Launcher/tokenizer process (applied when each module is imported):
- `sglang.srt.sampling.sampling_params.SamplingParams.verify(self, vocab_size)`, AFTER: runs on the tokenizer
  side for `/generate`, the OpenAI endpoints and `sgl.Engine`; a `ValueError` becomes HTTP 400 naming the field
  and the server stays up.
- `sglang.srt.managers.tokenizer_manager.TokenizerManager.update_request_meta_info`, AROUND: moves the
  scheduler's per-request `raas` report out of the token-sliced `customized_info` into `meta_info["raas"]`.
- `sglang.srt.utils.common.build_server_info(server_args, scheduler_info)`, AFTER: a top-level `raas` entry.
- `sglang.srt.managers.tokenizer_control_mixin.TokenizerControlMixin.open_session`, AROUND: SGLang sessions keep
  a request's row across turns, which RaaS does not track yet; on a RaaS server `/open_session` answers 400.

Scheduler process:
- `sglang.srt.managers.scheduler.Scheduler.__init__`, AFTER: on a RaaS server, opt the output streamer into
  `build_additional_customized_info` (SGLang's extension point for per-request output fields).
- `...output_streamer.SchedulerOutputStreamer.build_additional_customized_info(self, reqs)`, AROUND: the
  `raas` report of each finished request (None for others).
- `...internal_state.SchedulerInternalStateController.get_internal_state`, AFTER: `raas` config and totals in
  each entry of `/get_server_info`'s `internal_states`.
- `...metrics_collector.SchedulerMetricsCollector.__init__` and `.log_stats`, AFTER: the counter
  `sglang:raas_evicted_pages_total` and the gauge `sglang:raas_resident_pages` (with `--enable-metrics`), on the
  schedulers SGLang exports metrics from (`get_parallel().attn_tp_rank == 0`, or all with
  `--enable-metrics-for-all-schedulers`; `runtime_context.get_observability`).
- `...pool_stats_observer.PoolStats.get_decode_usage_msg_parts`, AFTER: evictions in the decode log line.
- `sglang.srt.managers.scheduler.Scheduler.flush_cache`, AFTER: a successful flush restarts the allocator's
  low-water mark (`kv_free_low_water_tokens` in `/get_server_info`, recorded by `patches/schedule.py`).
"""

from __future__ import annotations

from raas_sglang.config import ConfigError, RaasConfig
from raas_sglang.patches import reports, runtime


def _server_config() -> RaasConfig:
    from sglang.srt.runtime_context import get_server_args

    from raas_sglang.patches.server_args import config_of

    return config_of(get_server_args())


# -- launcher / tokenizer process --------------------------------------------------------------------------------


def verify(result, self, *args, **kwargs):
    """The request rows of the refusal registry (`raas_sglang.refusals.REQUEST`); the first that refuses raises
    a `ValueError` with its message, which SGLang answers with HTTP 400."""
    if not self.custom_params and (self.beam_width or 1) <= 1:
        return result
    try:
        config = _server_config()
    except ValueError:  # "Global server args is not set yet!": a bare SamplingParams, no server to check against
        return result
    tokenizer_check(self, config)
    return result


def tokenizer_check(sampling_params, config: RaasConfig) -> None:
    """Raise `ValueError` (HTTP 400) with the first request row that refuses these sampling params."""
    from raas_sglang.refusals import refuse_request

    try:
        refuse_request(sampling_params.custom_params, config, sampling_params.beam_width)
    except ConfigError as err:
        raise ValueError(str(err)) from None


def update_request_meta_info(orig, self, meta_info, state, customized_info, index, finish_reason):
    if customized_info and "raas" in customized_info:
        customized_info = dict(customized_info)
        report = customized_info.pop("raas")[index]
        if report is not None:
            meta_info["raas"] = report
    return orig(self, meta_info, state, customized_info, index, finish_reason)


def build_server_info(result, server_args, *args, **kwargs):
    from raas_sglang.patches.server_args import config_of

    result["raas"] = config_of(server_args).to_dict()
    return result


async def open_session(orig, self, obj, *args, **kwargs):
    if _server_config().enabled:
        raise ValueError("open_session: SGLang sessions are not supported with --kv-policy raas yet; use a dense server")
    return await orig(self, obj, *args, **kwargs)


MAIN_HOOKS = {
    "sglang.srt.managers.tokenizer_control_mixin": (
        (
            "sglang.srt.managers.tokenizer_control_mixin.TokenizerControlMixin.open_session",
            open_session,
            "AROUND",
        ),
    ),
    "sglang.srt.sampling.sampling_params": (
        ("sglang.srt.sampling.sampling_params.SamplingParams.verify", verify, "AFTER"),
    ),
    "sglang.srt.managers.tokenizer_manager": (
        (
            "sglang.srt.managers.tokenizer_manager.TokenizerManager.update_request_meta_info",
            update_request_meta_info,
            "AROUND",
        ),
    ),
    "sglang.srt.utils.common": (("sglang.srt.utils.common.build_server_info", build_server_info, "AFTER"),),
}

# -- scheduler process -------------------------------------------------------------------------------------------


def scheduler_init(result, self, *args, **kwargs):
    if runtime.get() is not None:
        from sglang.srt.managers.scheduler_components.output_streamer import SchedulerOutputStreamer

        SchedulerOutputStreamer.has_additional_customized_info = True
    return result


def build_additional_customized_info(orig, self, reqs):
    rt = runtime.get()
    out = orig(self, reqs)
    if rt is not None:
        out = dict(out or {})
        out["raas"] = [getattr(r, "raas_report", None) if r.finished() else None for r in reqs]
    return out


def get_internal_state(result, self, *args, **kwargs):
    rt = runtime.get()
    if rt is not None:
        from sglang.srt.runtime_context import get_parallel

        # NOTE: with --dp-size the replicas' entries arrive in no fixed order; dp_rank says which is which
        result.internal_state["raas"] = {**reports.server_summary(rt), "dp_rank": get_parallel().dp_rank}
    return result


def _reports_metrics() -> bool:
    """SGLang's rule for which schedulers export metrics: attention-TP rank 0 of each group, or every scheduler
    with `--enable-metrics-for-all-schedulers` (their lines then differ by the `tp_rank` label). Every TP rank
    builds a collector, so a counter the others also bumped would count each eviction once per rank."""
    from sglang.srt.runtime_context import get_observability, get_parallel

    return get_parallel().attn_tp_rank == 0 or bool(get_observability().enable_metrics_for_all_schedulers)


def metrics_init(result, self, *args, **kwargs):
    rt = runtime.get()
    if rt is None or not _reports_metrics():
        return result
    from prometheus_client import Counter, Gauge

    names = list(self.labels.keys())
    self.raas_evicted_pages_total = (getattr(self, "_counter_cls", None) or Counter)(
        name="sglang:raas_evicted_pages_total", documentation="KV pages evicted by RaaS.", labelnames=names
    )
    self.raas_resident_pages = (getattr(self, "_gauge_cls", None) or Gauge)(
        name="sglang:raas_resident_pages",
        documentation="Decode KV pages resident in RaaS-managed requests.",
        labelnames=names,
        multiprocess_mode="mostrecent",
    )
    rt.metrics = self
    return result


def metrics_log_stats(result, self, *args, **kwargs):
    rt = runtime.get()
    if rt is not None and getattr(self, "raas_resident_pages", None) is not None:
        self.raas_resident_pages.labels(**self.labels).set(rt.resident_pages())
    return result


def flush_cache(result, self, *args, **kwargs):
    rt = runtime.get()
    if rt is not None and result:  # flushed: the allocator's low-water mark starts again
        rt.totals.free_low_water = None
    return result


def decode_usage_msg_parts(result, self, *args, **kwargs):
    rt = runtime.get()
    if rt is not None:
        result.append(f"raas evicted pages: {rt.totals.evicted_pages}, raas resident pages: {rt.resident_pages()}")
    return result


_SC = "sglang.srt.managers.scheduler_components."
SCHEDULER_HOOKS = (
    ("sglang.srt.managers.scheduler.Scheduler.__init__", scheduler_init, "AFTER"),
    ("sglang.srt.managers.scheduler.Scheduler.flush_cache", flush_cache, "AFTER"),
    (
        _SC + "output_streamer.SchedulerOutputStreamer.build_additional_customized_info",
        build_additional_customized_info,
        "AROUND",
    ),
    (_SC + "internal_state.SchedulerInternalStateController.get_internal_state", get_internal_state, "AFTER"),
    ("sglang.srt.observability.metrics_collector.SchedulerMetricsCollector.__init__", metrics_init, "AFTER"),
    ("sglang.srt.observability.metrics_collector.SchedulerMetricsCollector.log_stats", metrics_log_stats, "AFTER"),
    (_SC + "pool_stats_observer.PoolStats.get_decode_usage_msg_parts", decode_usage_msg_parts, "AFTER"),
)
