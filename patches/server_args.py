"""Seam: the RaaS flags on SGLang's server arguments.

Upstream symbols hooked (sglang 0.5.23, `sglang/srt/server_args.py`, `sglang/srt/entrypoints/engine.py`):

- `ServerArgs.add_cli_args` (staticmethod), AFTER: adds `--kv-policy`, `--raas-budget`,
  `--raas-refresh-ratio`, `--raas-refresh-threshold`, `--raas-score`, `--raas-reduce`, `--raas-reserve` to the stock parser, so `python -m sglang.launch_server --help` lists them.
- `ServerArgs.from_cli_args` (classmethod), AROUND: `from_cli_args` copies only declared fields, so our values
  would be dropped; the hook validates them, defaults the page size to 16 under RaaS, and stores the resolved
  `RaasConfig` on the record as `_raas_config`. Attributes named `_...` may be set at any time and are pickled
  into every SGLang child process (`ServerArgs.__reduce__` carries `__dict__`).
- `Engine.server_args_class` (a documented class attribute, set directly; hooking it would rebind `ServerArgs`
  across SGLang): a factory that accepts `kv_policy=`, `raas_budget=`, `raas_refresh_ratio=`.

Bad values stop the launcher with one line (`SystemExit`) naming the flag and what is allowed; `sgl.Engine`
raises `raas_sglang.config.ConfigError` (a `ValueError`) instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import Any

from raas_sglang import config as cfg
from raas_sglang.config import ConfigError, RaasConfig
from raas_sglang.patches.lazy import when_imported

ATTR = "_raas_config"
logger = logging.getLogger("raas_sglang")


def config_of(server_args: Any) -> RaasConfig:
    """The RaaS config a record carries; a record built without the plugin's paths is plain dense."""
    found = getattr(server_args, ATTR, None)
    return found if isinstance(found, RaasConfig) else RaasConfig(page_size=server_args.page_size or 1)


def add_cli_args(result: Any, parser: argparse.ArgumentParser) -> Any:
    """AFTER hook on `ServerArgs.add_cli_args`."""
    group = parser.add_argument_group("RaaS KV policy (raas_sglang plugin)")
    group.add_argument(
        "--kv-policy",
        type=str,
        default=None,
        metavar="{" + ",".join(cfg.POLICIES) + "}",
        help=f"KV cache policy for decoding. 'dense' (default) is stock SGLang; 'raas' keeps the prompt pages "
        f"pinned and at most --raas-budget tokens of decode KV per request, evicting the page attended "
        f"longest ago; the baselines 'streaming' (sink page + recent window) and 'h2o' (accumulated attention + "
        f"recent half) keep the same budget. Without --page-size, the page size is {cfg.RAAS_DEFAULT_PAGE_SIZE} "
        f"for all but 'dense'.",
    )
    group.add_argument(
        "--raas-budget",
        type=str,
        default=None,
        metavar="TOKENS",
        help=f"Decode KV budget per request in tokens, rounded up to whole pages; at least "
        f"{cfg.MIN_BUDGET_PAGES} pages. Default {cfg.DEFAULT_BUDGET_TOKENS}. Only with --kv-policy raas.",
    )
    group.add_argument(
        "--raas-refresh-ratio",
        type=str,
        default=None,
        metavar="RATIO",
        help=f"Fraction in (0, 1] of a request's resident decode pages whose 'last attended' timestamp is "
        f"refreshed each step (top by score). Default {cfg.DEFAULT_REFRESH_RATIO}. Only with --kv-policy raas.",
    )
    group.add_argument(
        "--raas-refresh-threshold",
        type=str,
        default=None,
        metavar="MULTIPLE",
        help="A refreshed page must also get at least MULTIPLE times the mean score of the request's resident "
        f"decode pages; 0 = no threshold. Default {cfg.DEFAULT_REFRESH_THRESHOLD}. Only with --kv-policy raas.",
    )
    group.add_argument(
        "--raas-score",
        type=str,
        default=None,
        metavar="{" + ",".join(cfg.SCORES) + "}",
        help="How decode pages are scored: 'exact' attention mass from the decode pass (torch_native; triton "
        "through the plugin's own decode kernel), 'quest' key-bound estimates (any backend), 'auto' (default) "
        "exact on torch_native, quest elsewhere. Only with --kv-policy raas.",
    )
    group.add_argument(
        "--raas-reduce",
        type=str,
        default=None,
        metavar="{" + ",".join(cfg.REDUCES) + "}",
        help="How a page's per-head and per-layer scores combine (HEADS-LAYERS), before the top "
        f"--raas-refresh-ratio pages are refreshed. Default {cfg.DEFAULT_REDUCE}. Only with --kv-policy raas.",
    )
    group.add_argument(
        "--raas-reserve",
        type=str,
        default=None,
        metavar="FRACTION",
        help="Fraction in [0, 1) of a raas request's page limit kept for the decode pages with the highest "
        "accumulated score (heavy hitters), which the 'last attended' rule then never evicts; 0 is the paper's "
        f"rule alone. Default {cfg.DEFAULT_RESERVE}. Only with --kv-policy raas.",
    )
    return result


def _given(source: Any) -> dict[str, Any]:
    return {attr: getattr(source, attr, None) for attr in cfg.FLAGS.values()}


def from_cli_args(orig, cls, args: argparse.Namespace):
    """AROUND hook on `ServerArgs.from_cli_args`."""
    given = _given(args)
    try:
        args.page_size = cfg.default_page_size(given["kv_policy"] or cfg.DEFAULT_POLICY, args.page_size)
        raas = cfg.resolve(given, args.page_size or 1)
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    server_args = orig(cls, args)
    setattr(server_args, ATTR, raas)
    return server_args


def engine_server_args(**kwargs: Any):
    """`Engine.server_args_class` replacement: `ServerArgs(**kwargs)` plus the RaaS keywords."""
    from sglang.srt.server_args import ServerArgs

    given = {attr: kwargs.pop(attr, None) for attr in cfg.FLAGS.values()}
    kwargs["page_size"] = cfg.default_page_size(given["kv_policy"] or cfg.DEFAULT_POLICY, kwargs.get("page_size"))
    raas = cfg.resolve(given, kwargs["page_size"] or 1)
    if kwargs["page_size"] is None:
        del kwargs["page_size"]
    server_args = ServerArgs(**kwargs)
    setattr(server_args, ATTR, raas)
    return server_args


def install_engine_factory() -> None:
    """Point `Engine.server_args_class` at `engine_server_args` as soon as the engine module is loaded.

    NOTE: importing the engine module costs ~5 s, so it is never imported here just for this.
    """

    def patch(module):
        module.Engine.server_args_class = staticmethod(engine_server_args)

    when_imported("sglang.srt.entrypoints.engine", patch)


def resolve_once(self, *args, **kwargs):
    """BEFORE hook on `ServerArgs.resolve_once` (CLI and `sgl.Engine` paths; children get resolved records).

    NOTE: RaaS state is updated between the scheduler's memory check and the step's allocation; the overlap
    scheduler runs those out of order, so RaaS turns it off (with a warning) rather than refusing.
    """
    if getattr(self, "_resolution_finished", False) or getattr(self, "_resolution_failed", False):
        return None
    if config_of(self).enabled and not self.disable_overlap_schedule:
        logger.warning("raas_sglang: --kv-policy raas turns the overlap scheduler off (--disable-overlap-schedule)")
        self.disable_overlap_schedule = True
    return None


SUPPORTED_BACKENDS = {"torch_native", "triton", "flashinfer"}


def unsupported(view) -> list[str]:
    """What a RaaS server cannot run with yet, each as 'what; what to change' (empty when fine).

    `view` is the resolved server args (`resolving_view(server_args)`).
    """
    problems = []
    if view.speculative_algorithm:
        problems.append("speculative decoding; drop --speculative-algorithm")
    if str(view.disaggregation_mode) not in ("null", "None", "DisaggregationMode.NULL"):
        problems.append("PD disaggregation; drop --disaggregation-mode")
    if view.enable_hierarchical_cache:
        problems.append("the hierarchical cache; drop --enable-hierarchical-cache")
    for name in ("tp_size", "pp_size", "dp_size"):
        if (getattr(view, name, 1) or 1) > 1:
            problems.append(f"{name.replace('_', ' ')} > 1; use --{name.replace('_', '-')} 1")
    backends = {view.attention_backend, view.decode_attention_backend, view.prefill_attention_backend} - {None}
    if backends - SUPPORTED_BACKENDS:
        problems.append(
            f"attention backend {', '.join(sorted(backends - SUPPORTED_BACKENDS))}; use --attention-backend "
            + " or ".join(sorted(SUPPORTED_BACKENDS))
        )
    if config_of(view).policy in cfg.SELECTING and backends - {"torch_native"}:
        problems.append("Quest page selection on the triton/flashinfer backends; use --attention-backend torch_native")
    config = config_of(view)
    if config.score == "exact" and backends - {"torch_native", "triton"}:
        problems.append("--raas-score exact on the flashinfer backend (its kernels give no attention mass); use "
                        "--raas-score quest or auto, or --attention-backend triton")
    if getattr(view, "enable_mixed_chunk", False):
        problems.append("mixed chunked prefill (decode rows would take the extend path); drop --enable-mixed-chunk")
    if getattr(view, "enable_streaming_session", False):
        problems.append("streaming sessions; drop --enable-streaming-session")
    if view.enable_torch_compile:
        problems.append("torch.compile / CPU graphs (they bypass the RaaS decode path); drop --enable-torch-compile")
    graphs = getattr(view, "cuda_graph_config", None)
    decode_graph = getattr(getattr(graphs, "decode", None), "backend", "disabled")
    if str(decode_graph) not in ("disabled", "None") and str(getattr(view, "device", "cuda")) != "cpu":
        problems.append("CUDA graphs for decode; add --cuda-graph-backend-decode=disabled")
    return problems


def _decode_backend(view) -> str | None:
    return view.decode_attention_backend or view.attention_backend


def check_server_args(result, self, *args, **kwargs):
    """AFTER hook on `ServerArgs.check_server_args` (runs once resolved, on the CLI and `sgl.Engine` paths,
    before any child process starts): refuse combinations RaaS does not support yet, saying what to change."""
    if not config_of(self).enabled:
        return result
    from sglang.srt.arg_groups.overrides import resolving_view

    problems = unsupported(resolving_view(self))
    try:
        from sglang.srt.arg_groups.model_override_base import model_config_of
        from sglang.srt.configs.model_config import AttentionArch

        model = model_config_of(self)
        budget, context = config_of(self).budget_tokens, int(model.context_len)
        if budget > context:
            _refuse(self, f"--raas-budget: must be at most the context length ({context} tokens), got {budget}")
        if model.attention_arch == AttentionArch.MLA:
            problems.append("MLA/DSA models (RaaS pages per-head KV); use --kv-policy dense for this model")
        if getattr(model, "is_hybrid_swa", False) or getattr(model, "window_size", None) or getattr(
            model, "attention_chunk_size", None
        ):
            problems.append("sliding-window or chunked-attention models; use --kv-policy dense for this model")
        if getattr(model, "is_encoder_decoder", False):
            problems.append("encoder-decoder models; use --kv-policy dense for this model")
    except (ImportError, AttributeError):
        pass
    if problems:
        _refuse(self, f"--kv-policy {config_of(self).policy} does not support " + "; nor ".join(problems))
    config = config_of(self)
    if config.score == "exact" and _decode_backend(resolving_view(self)) == "triton":
        # NOTE: the launcher's tokenizer side and (pickled with the args) every child see the same record
        setattr(self, ATTR, dataclasses.replace(config, exact_kernel=True))
    return result


def _refuse(server_args, message: str):
    if str(server_args.launch_command or "").startswith("Engine("):
        raise ConfigError(message)
    raise SystemExit(f"error: {message}")  # the CLI launcher: one line, no traceback


HOOKS = (
    ("sglang.srt.server_args.ServerArgs.check_server_args", check_server_args, "AFTER"),
    ("sglang.srt.server_args.ServerArgs.resolve_once", resolve_once, "BEFORE"),
    ("sglang.srt.server_args.ServerArgs.add_cli_args", add_cli_args, "AFTER"),
    ("sglang.srt.server_args.ServerArgs.from_cli_args", from_cli_args, "AROUND"),
)
