"""The refusal registry: every input RaaS refuses, one row each, in three tables.

Imports no SGLang: the startup rows read SGLang's resolved server args and model config by attribute. The checks
run in `patches/startup_checks.py` (startup), `patches/api.py` `verify` and `config.request_overrides` (requests).
docs/bad-input.md is generated from these tables and the cases of tests/bad_inputs.py, and every row must have a
case there (tests/test_bad_input_doc.py).

A row is a `Refusal`: a stable `id` (its kind, a dot, a name), `when` (the input refused, in the doc's words),
`message` ("what; what to change": a `str.format` template filled from the check's context, e.g. `{policy!r}`)
and `refuses(context) -> bool`.

- `FLAG`: bad values of the RaaS flags: the launcher prints `error: ` + the message and exits; `sgl.Engine`
  raises `ConfigError`. Most are raised by `config.resolve` while the flags are parsed (`refuses` is None: the row
  documents that check); a row with `refuses` needs the resolved server (`Startup`) and runs first at startup.
- `STARTUP`: what a budgeted server cannot run with yet, checked on the resolved server (`Startup`); the messages
  of all matching rows make one line, `--kv-policy P does not support A; nor B`.
- `REQUEST`: a request's RaaS fields (`Request`), checked in order on the tokenizer side (HTTP 400) and again in
  the scheduler; the first matching row refuses. A row may assume the rows above it passed.

Adding a refusal: one row here (a row with `model=True` reads the model config and is skipped where that cannot
be built), one case naming its id in tests/bad_inputs.py, then `python tests/bad_inputs.py > docs/bad-input.md`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple

from raas_sglang import config as cfg
from raas_sglang.config import ConfigError, RaasConfig
from raas_sglang.policies import DENSE

SUPPORTED_BACKENDS = frozenset({"torch_native", "triton", "flashinfer"})


@dataclass(frozen=True)
class Refusal:
    id: str
    when: str
    message: str
    refuses: Callable[[Any], bool] | None = None  # None: checked by `config.resolve` (FLAG rows only)
    model: bool = False  # reads `Startup.model`

    @property
    def kind(self) -> str:
        return self.id.split(".", 1)[0]

    def text(self, context: Any) -> str:
        return self.message.format_map(_Lookup(context))


def show(template: str) -> str:
    """`template` (a row's `message` or `when`) with the fields that depend on no input filled in, the others
    left as written (`{name!r}`): what the doc shows."""
    return template.format_map(_Lookup(_Shown()))


class _Lookup(dict):
    """`str.format_map` fields read as attributes of a context."""

    def __init__(self, context: Any):
        super().__init__()
        self.context = context

    def __missing__(self, key: str) -> Any:
        return getattr(self.context, key)


class Fields:
    """Message fields that depend on no input."""

    policies = property(lambda self: ", ".join(cfg.POLICIES))
    budgeted = property(lambda self: ", ".join(p for p in cfg.POLICIES if p != DENSE))
    scores = property(lambda self: ", ".join(cfg.SCORES))
    reduces = property(lambda self: ", ".join(cfg.REDUCES))
    min_pages = property(lambda self: cfg.MIN_BUDGET_PAGES)
    supported_backends = property(lambda self: " or ".join(sorted(SUPPORTED_BACKENDS)))


class _Placeholder:
    """A field of the input, shown as written (`{name!r}`, `{name:.0f}`)."""

    def __init__(self, name: str):
        self.name = name

    def __getattr__(self, attr: str) -> "_Placeholder":
        return _Placeholder(f"{self.name}.{attr}")

    def __str__(self) -> str:
        return "{%s}" % self.name

    def __repr__(self) -> str:
        return "{%s!r}" % self.name

    def __format__(self, spec: str) -> str:
        return "{%s:%s}" % (self.name, spec) if spec else str(self)


class _Shown(Fields):
    def __getattr__(self, name: str) -> _Placeholder:
        return _Placeholder(name)


class Startup(Fields):
    """What the startup rows read: SGLang's resolved server args (`view`, read by attribute), the RaaS config, and
    the model config (SGLang's `ModelConfig`; None where it could not be built)."""

    def __init__(self, view: Any, config: RaasConfig, model: Any = None):
        self.view, self.config, self.model = view, config, model

    policy = property(lambda self: self.config.policy)
    budget = property(lambda self: self.config.budget_tokens)
    context = property(lambda self: int(self.model.context_len))

    @property
    def backends(self) -> set[str]:
        names = ("attention_backend", "decode_attention_backend", "prefill_attention_backend")
        return {arg(self.view, n) for n in names} - {None}

    @property
    def unsupported_backends(self) -> str:
        return ", ".join(sorted(self.backends - SUPPORTED_BACKENDS))


class Request(Fields):
    """What the request rows read: the request's `custom_params` and `beam_width`, and the server's config."""

    def __init__(self, params: Mapping[str, Any] | None, server: RaasConfig, beam_width: int | None = None):
        self.params, self.server, self.beam_width = params or {}, server, beam_width or 1

    policy = property(lambda self: self.params.get("kv_policy", self.server.policy))
    budget = property(lambda self: self.params.get("raas_budget"))
    trace = property(lambda self: self.params.get("raas_trace", False))
    server_budget = property(lambda self: self.server.budget_tokens)
    tp = property(lambda self: self.server.tp_size)
    page_size = property(lambda self: self.server.page_size)
    min_tokens = property(lambda self: cfg.MIN_BUDGET_PAGES * self.server.page_size)

    @property
    def budget_shown(self) -> str:
        # NOTE: JSON integers past 64 bits reach us as floats (1e+40): shown as the integer they stand for
        return f"{self.budget:.0f}" if isinstance(self.budget, float) else f"{self.budget}"

    @property
    def budget_is_integer(self) -> bool:
        b = self.budget
        return (isinstance(b, float) and b.is_integer()) or (isinstance(b, int) and not isinstance(b, bool))


class VersionMismatch(RuntimeError):
    """A server-args field the checks read is missing: this SGLang is not the one the plugin was built for."""


def arg(view: Any, dotted: str) -> Any:
    """The resolved server arg `dotted` (e.g. `cuda_graph_config.decode.backend`). NOTE: never defaulted: a
    missing field means a refusal could silently stop applying, so it stops the server instead."""
    value = view
    for part in dotted.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise VersionMismatch(f"raas_sglang: SGLang's server args have no {dotted!r} (is this SGLang 0.5.23?); "
                                  "refusing to start without checking it") from None
    return value


def _set(attr: str) -> Callable[[Startup], bool]:
    """The server arg `attr` is on (a flag that must stay off under RaaS)."""
    return lambda s: bool(arg(s.view, attr))


def _above_one(attr: str) -> Callable[[Startup], bool]:
    return lambda s: (arg(s.view, attr) or 1) > 1


def _full_prefill_graphs(s: Startup) -> bool:
    """A fully captured prefill graph replays extend attention without the plugin's hooks (the hole-skipping re-prefill
    of a retracted request, the Quest key-bound folding). NOTE: `breakable` (SGLang's default on CUDA) runs
    attention eagerly between captured pieces, with the hooks."""
    return str(arg(s.view, "cuda_graph_config.prefill.backend")) == "full"


def _decode_graphs(s: Startup) -> bool:
    backend = arg(s.view, "cuda_graph_config.decode.backend")
    return str(backend) not in ("disabled", "None") and str(arg(s.view, "device")) != "cpu"


FLAG = (
    Refusal("flag.kv-policy", "`--kv-policy` names no known policy",
            "--kv-policy: must be one of {policies}, got {value!r}"),
    Refusal("flag.budgeted-only", "a `--raas-*` flag with `--kv-policy dense` or without `--kv-policy`",
            "{flag}: only allowed with --kv-policy {budgeted} (the policy is dense); add --kv-policy raas or drop "
            "{flags}"),
    Refusal("flag.raas-budget.type", "`--raas-budget` is not a positive integer",
            "--raas-budget: must be a positive integer number of tokens, got {value!r}"),
    Refusal("flag.raas-budget.min-pages", "`--raas-budget` rounds up to fewer than {min_pages} pages",
            "--raas-budget: must be at least {min_pages} pages = {min_tokens} tokens at page size {page_size}, "
            "got {value!r}"),
    Refusal("flag.raas-budget.context", "`--raas-budget` is above the model's context length",
            "--raas-budget: must be at most the context length ({context} tokens), got {budget}",
            lambda s: s.budget > s.context, model=True),
    Refusal("flag.raas-refresh-ratio", "`--raas-refresh-ratio` is not in (0, 1]",
            "--raas-refresh-ratio: must be a number in (0, 1], got {value!r}"),
    Refusal("flag.raas-refresh-threshold", "`--raas-refresh-threshold` is negative, infinite or not a number",
            "--raas-refresh-threshold: must be a finite number >= 0, got {value!r}"),
    Refusal("flag.raas-reserve", "`--raas-reserve` is not in [0, 1)",
            "--raas-reserve: must be a number in [0, 1), got {value!r}"),
    Refusal("flag.raas-score", "`--raas-score` is not one of {scores}",
            "--raas-score: must be one of {scores}, got {value!r}"),
    Refusal("flag.raas-reduce", "`--raas-reduce` is not one of {reduces}",
            "--raas-reduce: must be one of {reduces}, got {value!r}"),
)

STARTUP = (
    Refusal("startup.speculative", "`--speculative-algorithm` is set",
            "speculative decoding; drop --speculative-algorithm", _set("speculative_algorithm")),
    Refusal("startup.disaggregation", "`--disaggregation-mode` is not null",
            "PD disaggregation; drop --disaggregation-mode",
            lambda s: str(arg(s.view, "disaggregation_mode")) not in ("null", "None", "DisaggregationMode.NULL")),
    Refusal("startup.hierarchical-cache", "`--enable-hierarchical-cache`",
            "the hierarchical cache; drop --enable-hierarchical-cache", _set("enable_hierarchical_cache")),
    Refusal("startup.selection-tp", "a selecting `--kv-policy` (Quest page selection) with `--tp-size` above 1",
            "Quest page selection under tensor parallel (each rank would pick pages from its own heads); use "
            "--kv-policy raas, streaming or h2o, or --tp-size 1",
            lambda s: s.policy in cfg.SELECTING and (arg(s.view, "tp_size") or 1) > 1),
    Refusal("startup.pp-size", "`--pp-size` above 1",
            "pipeline parallel (each stage holds only its layers' page scores, and SGLang's stages run different "
            "micro-batches, so no stage could take a request's eviction decision); use --tp-size instead of "
            "--pp-size", _above_one("pp_size")),
    Refusal("startup.attention-backend",
            "an attention backend (`--attention-backend`, `--decode-attention-backend`, "
            "`--prefill-attention-backend`) other than {supported_backends}",
            "attention backend {unsupported_backends}; use --attention-backend {supported_backends}",
            lambda s: bool(s.backends - SUPPORTED_BACKENDS)),
    Refusal("startup.selection-backend",
            "a selecting `--kv-policy` (Quest page selection) with a backend other than torch_native",
            "Quest page selection on the triton/flashinfer backends; use --attention-backend torch_native",
            lambda s: s.policy in cfg.SELECTING and bool(s.backends - {"torch_native"})),
    Refusal("startup.exact-score-backend", "`--raas-score exact` with a backend other than torch_native, triton",
            "--raas-score exact on the flashinfer backend (its kernels give no attention mass); use --raas-score "
            "quest or auto, or --attention-backend triton",
            lambda s: s.config.score == "exact" and bool(s.backends - {"torch_native", "triton"})),
    Refusal("startup.mixed-chunk", "`--enable-mixed-chunk`",
            "mixed chunked prefill (decode rows would take the extend path); drop --enable-mixed-chunk",
            _set("enable_mixed_chunk")),
    Refusal("startup.streaming-session", "`--enable-streaming-session`",
            "streaming sessions; drop --enable-streaming-session", _set("enable_streaming_session")),
    Refusal("startup.torch-compile", "`--enable-torch-compile`",
            "torch.compile / CPU graphs (they bypass the RaaS decode path); drop --enable-torch-compile",
            _set("enable_torch_compile")),
    Refusal("startup.cuda-graph-decode", "CUDA graphs for decode on a non-CPU device (SGLang's default on CUDA)",
            "CUDA graphs for decode; add --cuda-graph-backend-decode=disabled", _decode_graphs),
    Refusal("startup.cuda-graph-prefill-full", "fully captured CUDA graphs for prefill (`--cuda-graph-backend-prefill "
            "full`)", "fully captured CUDA graphs for prefill (replayed extends skip the RaaS attention hooks); use "
            "--cuda-graph-backend-prefill=breakable or disabled", _full_prefill_graphs),
    # options that change how the radix tree is filled, how rows are freed, how batches overlap or where requests
    # are validated: refused until tested with evictions (then they move to ALLOWED)
    Refusal("startup.flexkv", "`--enable-flexkv`",
            "FlexKV (its tree inserts read req_to_token directly, past evicted pages); drop --enable-flexkv",
            _set("enable_flexkv")),
    Refusal("startup.radix-cache-backend", "`--radix-cache-backend` names a registered backend",
            "a custom radix-cache backend (only the built-in tree is hole-aware); drop --radix-cache-backend",
            _set("radix_cache_backend")),
    Refusal("startup.lmcache", "`--enable-lmcache`", "LMCache (it stores and reloads KV by prefix, evicted pages "
            "included); drop --enable-lmcache", _set("enable_lmcache")),
    Refusal("startup.session-radix-cache", "`--enable-session-radix-cache`",
            "the session radix cache; drop --enable-session-radix-cache", _set("enable_session_radix_cache")),
    Refusal("startup.strip-thinking-cache", "`--strip-thinking-cache`",
            "--strip-thinking-cache (not yet tested with evicted pages); drop --strip-thinking-cache",
            _set("strip_thinking_cache")),
    Refusal("startup.two-batch-overlap", "`--enable-two-batch-overlap`",
            "two-batch overlap (micro-batches split the decode step RaaS acts on); drop --enable-two-batch-overlap",
            _set("enable_two_batch_overlap")),
    Refusal("startup.single-batch-overlap", "`--enable-single-batch-overlap`",
            "single-batch overlap; drop --enable-single-batch-overlap", _set("enable_single_batch_overlap")),
    Refusal("startup.attn-dp-size", "`--attn-dp-size` above 1 (or `--enable-dp-attention`)",
            "attention data parallel (the ranks of one TP group decode different requests, while RaaS combines page "
            "scores over the whole TP group); use --dp-size N for replicas instead",
            lambda s: (arg(s.view, "attn_dp_size") or 1) > 1 or bool(arg(s.view, "enable_dp_attention"))),
    Refusal("startup.attn-cp-size", "`--attn-cp-size` above 1",
            "attention context parallel (a request's KV pages are split over ranks by position, so no rank sees a "
            "page's whole score); drop --attn-cp-size", _above_one("attn_cp_size")),
    Refusal("startup.dcp-size", "`--dcp-size` above 1",
            "decode context parallel (a request's KV pages are interleaved over ranks); drop --dcp-size",
            _above_one("dcp_size")),
    Refusal("startup.moe-dp-size", "`--moe-dp-size` above 1",
            "MoE data parallel (not yet tested with evictions); drop --moe-dp-size", _above_one("moe_dp_size")),
    Refusal("startup.kv-cache-sharding", "`--enable-kv-cache-sharding`",
            "KV cache sharding (each rank holds a slice of the pool, which RaaS does not page yet); drop "
            "--enable-kv-cache-sharding", _set("enable_kv_cache_sharding")),
    Refusal("startup.tokenizer-workers", "`--tokenizer-worker-num` above 1",
            "several tokenizer workers (requests would skip RaaS's validation); use --tokenizer-worker-num 1",
            _above_one("tokenizer_worker_num")),
    Refusal("startup.mla-model", "the model's attention is MLA (or DSA)",
            "MLA/DSA models (RaaS pages per-head KV); use --kv-policy dense for this model",
            lambda s: getattr(s.model.attention_arch, "name", s.model.attention_arch) == "MLA", model=True),
    Refusal("startup.sliding-window-model", "the model has sliding-window (hybrid SWA) or chunked attention",
            "sliding-window or chunked-attention models; use --kv-policy dense for this model",
            lambda s: bool(getattr(s.model, "is_hybrid_swa", False) or getattr(s.model, "window_size", None)
                           or getattr(s.model, "attention_chunk_size", None)), model=True),
    Refusal("startup.encoder-decoder-model", "the model is an encoder-decoder",
            "encoder-decoder models; use --kv-policy dense for this model",
            lambda s: bool(getattr(s.model, "is_encoder_decoder", False)), model=True),
)

REQUEST = (
    Refusal("request.beam-search", "`beam_width` above 1 on a budgeted server",
            "beam_width: beam search is not supported with --kv-policy raas yet; use a dense server",
            lambda r: r.server.enabled and r.beam_width > 1),
    Refusal("request.kv-policy", "`custom_params.kv_policy` names no known policy",
            "custom_params.kv_policy: must be one of {policies}, got {policy!r}",
            lambda r: not isinstance(r.policy, str) or r.policy not in cfg.POLICIES),
    Refusal("request.kv-policy.dense-server", "a budgeted `custom_params.kv_policy` on a dense server",
            "custom_params.kv_policy: {policy!r} needs a server started with a budgeted --kv-policy "
            "({budgeted}); this one is dense",
            lambda r: r.policy != DENSE and not r.server.enabled),
    Refusal("request.kv-policy.exact-kernel",
            "a selecting `custom_params.kv_policy` on a triton server with `--raas-score exact`",
            "custom_params.kv_policy: {policy!r} is not available on this server (--raas-score exact on the "
            "triton backend selects no pages); use raas, streaming, h2o or dense here",
            lambda r: r.server.exact_kernel and r.policy in cfg.SELECTING),
    Refusal("request.kv-policy.tp", "a selecting `custom_params.kv_policy` on a server with `--tp-size` above 1",
            "custom_params.kv_policy: {policy!r} is not available under tensor parallel (--tp-size {tp}: Quest "
            "page selection would pick pages per rank); use raas, streaming, h2o or dense here",
            lambda r: r.server.tp_size > 1 and r.policy in cfg.SELECTING),
    Refusal("request.kv-policy.bounds", "a selecting `custom_params.kv_policy` on a server without page key bounds",
            "custom_params.kv_policy: {policy!r} needs page key bounds, kept only by servers started with "
            "--kv-policy quest or raas+quest, or with --raas-score quest",
            lambda r: r.policy in cfg.SELECTING and not r.server.keeps_bounds),
    Refusal("request.raas-budget.above-server", "`custom_params.raas_budget` above the server's `--raas-budget`",
            "custom_params.raas_budget: must be at most the server's --raas-budget ({server_budget} tokens), got "
            "{budget_shown}",
            lambda r: r.budget_is_integer and r.budget > r.server_budget),
    Refusal("request.raas-budget.type", "`custom_params.raas_budget` is not a positive JSON integer",
            "custom_params.raas_budget: must be a positive integer number of tokens, got {budget!r}",
            lambda r: r.budget is not None and (isinstance(r.budget, bool) or not isinstance(r.budget, int)
                                                or r.budget <= 0)),
    Refusal("request.raas-budget.min-pages", "`custom_params.raas_budget` rounds up to fewer than {min_pages} pages",
            "custom_params.raas_budget: must be at least {min_pages} pages = {min_tokens} tokens at page size "
            "{page_size}, got {budget!r}",
            lambda r: r.budget is not None and -(-r.budget // r.page_size) < cfg.MIN_BUDGET_PAGES),
    Refusal("request.raas-trace", "`custom_params.raas_trace` is not true or false",
            "custom_params.raas_trace: must be true or false, got {trace!r}",
            lambda r: not isinstance(r.trace, bool)),
)


class Allowed(NamedTuple):
    """A non-default option that changes how the tree is filled or rows are freed, shown to work with evictions
    by `test` (a pytest node id)."""

    option: str
    why: str
    test: str


ALLOWED = (
    Allowed("--disable-radix-cache", "no tree: a request's pages are freed at its end; evicted pages are cut out "
            "of that free like any other release", "tests/test_raas_no_radix.py::test_evicting_without_radix_cache"),
    Allowed("--chunked-prefill-size N", "long prompts take the chunk-checkpoint path, capped at the first hole",
            "tests/test_raas_eviction.py::test_multi_turn_reuses_prompt_and_matches_cold"),
)

ROWS = {row.id: row for row in (*FLAG, *STARTUP, *REQUEST)}


def _hit(row: Refusal, context: Startup) -> bool:
    if not row.model:
        return bool(row.refuses(context))
    if context.model is None:
        return False
    try:
        return bool(row.refuses(context))
    except AttributeError:  # a model config without that attribute: nothing to refuse
        return False


def startup_refusal(context: Startup) -> tuple[list[Refusal], str] | None:
    """The rows that refuse this server and the one line to refuse it with; None when it may start (always for
    dense). A FLAG row refuses alone (the first that matches); the matching STARTUP rows are joined."""
    if not context.config.enabled:
        return None
    for row in FLAG:
        if row.refuses is not None and _hit(row, context):
            return [row], row.text(context)
    hits = [row for row in STARTUP if _hit(row, context)]
    if not hits:
        return None
    return hits, f"--kv-policy {context.policy} does not support " + "; nor ".join(r.text(context) for r in hits)


def request_refusal(params: Mapping[str, Any] | None, server: RaasConfig,
                    beam_width: int | None = None) -> tuple[Refusal, str] | None:
    """The first request row that refuses this request, and its message; None when it may run."""
    context = Request(params, server, beam_width)
    for row in REQUEST:
        if row.refuses(context):
            return row, row.text(context)
    return None


def refuse_request(params: Mapping[str, Any] | None, server: RaasConfig, beam_width: int | None = None) -> None:
    """Raise `ConfigError` with the message of the first request row that refuses this request."""
    found = request_refusal(params, server, beam_width)
    if found is not None:
        raise ConfigError(found[1])
