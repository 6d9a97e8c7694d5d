"""The refusal registry: every input RaaS refuses, one row each, in four tables.

Imports no SGLang: the rows read what `patches/` hands them by attribute (`raas_sglang/refusal_context.py`). The
checks run in `patches/startup_checks.py` (startup), `patches/model_checks.py` (after the model loaded),
`patches/api.py` `verify` and `patches/requests.py` (requests). docs/bad-input.md is generated from these tables
and the cases of tests/bad_inputs.py, and every row must have a case there (tests/test_bad_input_doc.py).

A row is a `Refusal`: a stable `id` (its kind, a dot, a name), `when` (the input refused, in the doc's words),
`message` ("what; what to change": a `str.format` template filled from the check's context, e.g. `{policy!r}`)
and `refuses(context) -> bool`.

- `FLAG`: bad values of the RaaS flags: the launcher prints `error: ` + the message and exits; `sgl.Engine`
  raises `ConfigError`. Most are raised by `config.resolve` while the flags are parsed (`refuses` is None: the row
  documents that check); a row with `refuses` needs the resolved server (`Startup`) and runs first at startup.
- `STARTUP`: what a budgeted server cannot run with yet, checked on the resolved server (`Startup`) before any
  child process starts; the messages of all matching rows make one line, `--kv-policy P does not support A; nor B`.
- `LOADED`: what SGLang actually built (`Loaded`: each attention layer, the KV pool and allocator classes, the
  allocator's page size), checked in every scheduler process once the model loaded, before it serves; the
  scheduler stops with the same kind of line, and the launch fails.
- `REQUEST` (`raas_sglang/refusal_requests.py`): a request's RaaS fields (`Request`), checked in order on the
  tokenizer side (HTTP 400) and again in the scheduler (the request is aborted); the first matching row refuses.

NOTE: a row that cannot read a field it needs stops the server (`VersionMismatch`), never "nothing to refuse".
Adding a refusal: one row here, one case naming its id in tests/bad_inputs.py, then
`python tests/bad_inputs.py > docs/bad-input.md`.
"""

from __future__ import annotations

from typing import NamedTuple

from raas_sglang import config as cfg
from raas_sglang.refusal_requests import REQUEST, refuse_request, request_refusal  # noqa: F401  (re-exported)
from raas_sglang.refusal_context import (  # noqa: F401  (re-exported: the registry's public names)
    HYBRID_SWA, HYBRID_SWA_BACKENDS, SUPPORTED_ALLOCATORS, SUPPORTED_BACKENDS, SUPPORTED_POOLS, WINDOW_BACKENDS,
    AttnLayer, Loaded, Refusal, Request, pool_supported,
    Startup, VersionMismatch, above_one, arg, decode_graphs, flag_set, full_prefill_graphs, pd_mode, show,
)


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
            "speculative decoding (draft and verify steps allocate through alloc_for_spec_decode, which RaaS "
            "does not hook yet: it would not evict; docs/architecture.md, Serving modes); drop "
            "--speculative-algorithm", flag_set("speculative_algorithm")),
    Refusal("startup.disaggregation-prefill", "`--disaggregation-mode prefill`",
            "a prefill server of PD disaggregation (it never decodes: nothing to evict); start the prefill server "
            "with --kv-policy dense and the decode server with --kv-policy POLICY",
            lambda s: pd_mode(s) == "prefill"),
    Refusal("startup.disaggregation-retraction-backup", "`--disaggregation-mode decode` with a retraction backup "
            "other than `cpu_tensor` or `none` (SGLang picks the host pool when none is given)",
            "a decode server whose retraction backup is the host pool (its copies of rows with evicted pages are not "
            "tested); add --disaggregation-decode-retraction-backup cpu_tensor",
            lambda s: pd_mode(s) == "decode"
            and str(arg(s.view, "disaggregation_decode_retraction_backup")) not in ("cpu_tensor", "none")),
    Refusal("startup.disaggregation-decode-radix", "`--disaggregation-decode-enable-radix-cache`",
            "the decode server's radix cache (not tested with evicted pages); drop "
            "--disaggregation-decode-enable-radix-cache", flag_set("disaggregation_decode_enable_radix_cache")),
    Refusal("startup.disaggregation-decode-offload", "`--disaggregation-decode-enable-offload-kvcache`",
            "decode-side KV offload (it stores rows with evicted pages); drop "
            "--disaggregation-decode-enable-offload-kvcache", flag_set("disaggregation_decode_enable_offload_kvcache")),
    Refusal("startup.hierarchical-cache", "`--enable-hierarchical-cache`",
            "the hierarchical cache (its host write-back, load-back and admission are not tested with evicted "
            "pages: docs/architecture.md, Serving modes); drop --enable-hierarchical-cache",
            flag_set("enable_hierarchical_cache")),
    Refusal("startup.selection-tp", "a selecting `--kv-policy` (Quest page selection) with `--tp-size` above 1",
            "Quest page selection under tensor parallel (each rank would pick pages from its own heads); use "
            "--kv-policy raas, streaming or h2o, or --tp-size 1",
            lambda s: s.policy in cfg.SELECTING and (arg(s.view, "tp_size") or 1) > 1),
    Refusal("startup.pp-size", "`--pp-size` above 1",
            "pipeline parallel (each stage holds only its layers' page scores, and SGLang's stages run different "
            "micro-batches, so no stage could take a request's eviction decision); use --tp-size instead of "
            "--pp-size", above_one("pp_size")),
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
            flag_set("enable_mixed_chunk")),
    Refusal("startup.streaming-session", "`--enable-streaming-session`",
            "streaming sessions; drop --enable-streaming-session", flag_set("enable_streaming_session")),
    Refusal("startup.torch-compile", "`--enable-torch-compile`",
            "torch.compile / CPU graphs (they bypass the RaaS decode path); drop --enable-torch-compile",
            flag_set("enable_torch_compile")),
    Refusal("startup.cuda-graph-decode", "CUDA graphs for decode on a non-CPU device (SGLang's default on CUDA)",
            "CUDA graphs for decode; add --cuda-graph-backend-decode=disabled", decode_graphs),
    Refusal("startup.cuda-graph-prefill-full", "fully captured CUDA graphs for prefill (`--cuda-graph-backend-prefill "
            "full`)", "fully captured CUDA graphs for prefill (replayed extends skip the RaaS attention hooks); use "
            "--cuda-graph-backend-prefill=breakable or disabled", full_prefill_graphs),
    # options that change how the radix tree is filled, how rows are freed, how batches overlap or where requests
    # are validated: refused until tested with evictions (then they move to ALLOWED)
    Refusal("startup.flexkv", "`--enable-flexkv`",
            "FlexKV (its tree inserts read req_to_token directly, past evicted pages); drop --enable-flexkv",
            flag_set("enable_flexkv")),
    Refusal("startup.radix-cache-backend", "`--radix-cache-backend` names a registered backend",
            "a custom radix-cache backend (only the built-in tree is hole-aware); drop --radix-cache-backend",
            flag_set("radix_cache_backend")),
    Refusal("startup.lmcache", "`--enable-lmcache`", "LMCache (it stores and reloads KV by prefix, evicted pages "
            "included); drop --enable-lmcache", flag_set("enable_lmcache")),
    Refusal("startup.session-radix-cache", "`--enable-session-radix-cache`",
            "the session radix cache; drop --enable-session-radix-cache", flag_set("enable_session_radix_cache")),
    Refusal("startup.two-batch-overlap", "`--enable-two-batch-overlap`",
            "two-batch overlap (micro-batches split the decode step RaaS acts on); drop --enable-two-batch-overlap",
            flag_set("enable_two_batch_overlap")),
    Refusal("startup.single-batch-overlap", "`--enable-single-batch-overlap`",
            "single-batch overlap; drop --enable-single-batch-overlap", flag_set("enable_single_batch_overlap")),
    Refusal("startup.attn-dp-size", "`--attn-dp-size` above 1 (or `--enable-dp-attention`)",
            "attention data parallel (the ranks of one TP group decode different requests, while RaaS combines page "
            "scores over the whole TP group); use --dp-size N for replicas instead",
            lambda s: (arg(s.view, "attn_dp_size") or 1) > 1 or bool(arg(s.view, "enable_dp_attention"))),
    Refusal("startup.attn-cp-size", "`--attn-cp-size` above 1",
            "attention context parallel (a request's KV pages are split over ranks by position, so no rank sees a "
            "page's whole score); drop --attn-cp-size", above_one("attn_cp_size")),
    Refusal("startup.dcp-size", "`--dcp-size` above 1",
            "decode context parallel (a request's KV pages are interleaved over ranks); drop --dcp-size",
            above_one("dcp_size")),
    Refusal("startup.moe-dp-size", "`--moe-dp-size` above 1",
            "MoE data parallel (not yet tested with evictions); drop --moe-dp-size", above_one("moe_dp_size")),
    Refusal("startup.kv-cache-sharding", "`--enable-kv-cache-sharding`",
            "KV cache sharding (each rank holds a slice of the pool, which RaaS does not page yet); drop "
            "--enable-kv-cache-sharding", flag_set("enable_kv_cache_sharding")),
    Refusal("startup.rust-server", "`SGLANG_RUST_SERVER=1` (SGLang's Rust HTTP front end)",
            "SGLang's Rust front end (SGLANG_RUST_SERVER=1: requests skip RaaS's tokenizer-side validation and its "
            "session refusal); unset SGLANG_RUST_SERVER", lambda s: s.rust_server),
    Refusal("startup.tokenizer-workers", "`--tokenizer-worker-num` above 1",
            "several tokenizer workers (requests would skip RaaS's validation); use --tokenizer-worker-num 1",
            above_one("tokenizer_worker_num")),
    Refusal("startup.page-size", "SGLang resolved a page size other than the one RaaS fixed",
            "a page size of {resolved_page_size} tokens (SGLang changed it after RaaS fixed {page_size}: evicting "
            "RaaS pages would free other tokens); use --kv-policy dense with these options",
            lambda s: int(arg(s.view, "page_size") or 1) != s.config.page_size),
    Refusal("startup.fp8-kv-torch-native", "an fp8 `--kv-cache-dtype` with the torch_native decode backend",
            "an fp8 KV cache on torch_native (RaaS's batched decode would not apply the cache's scales); use "
            "--kv-cache-dtype auto, or --kv-policy dense", lambda s: s.fp8_kv and s.decode_backend == "torch_native"),
    Refusal("startup.mla-model", "the model's attention is MLA (DeepSeek V2/V3/R1, Kimi K2) and it would decode "
            "or prefill on a backend other than torch_native or triton, or it uses DSA's indexer",
            "{mla_blocker}; use --attention-backend triton or torch_native (RaaS serves MLA there), or --kv-policy "
            "dense for this model", lambda s: s.attention_arch == "MLA" and bool(s.mla_blocker),
            model=True),
    Refusal("startup.linear-attention-model", "the model has linear-attention or state-space layers (Qwen3-Next, "
            "Qwen3.5, Nemotron-H, Falcon-H1, Mamba, ...)",
            "hybrid linear-attention or state-space models (their layers keep a recurrent state, not pages); use "
            "--kv-policy dense for this model", lambda s: s.linear_attention or s.attention_arch == "SSM", model=True),
    Refusal("startup.hybrid-swa-disaggregation", "a PD decode server (`--disaggregation-mode decode`) would build "
            "a hybrid sliding-window pool for the model (gpt-oss)",
            "a hybrid sliding-window KV pool on a PD decode server (its retracted requests resume from a host copy "
            "into one pool only); add --disable-hybrid-swa-memory, or use --kv-policy dense for this model",
            lambda s: bool(s.model.is_hybrid_swa) and pd_mode(s) == "decode", model=True),
    Refusal("startup.chunked-attention-model", "the model has chunked attention (Llama 4)",
            "chunked-attention models; use --kv-policy dense for this model",
            lambda s: bool(s.model.attention_chunk_size), model=True),
    Refusal("startup.encoder-decoder-model", "the model is an encoder-decoder",
            "encoder-decoder models; use --kv-policy dense for this model",
            lambda s: bool(s.model.is_encoder_decoder), model=True),
)

# checked in every scheduler process once SGLang built the model, its KV pool and allocator
# (patches/model_checks.py): what the model really does, whatever its config says
LOADED = (
    Refusal("loaded.kv-pool", "SGLang built a KV pool or allocator other than a per-head or MLA-latent paged one "
            "({supported_pools}) or a hybrid sliding-window pair of per-head pools of one K/V shape (SWAKVPool)",
            "the KV pool SGLang built for this model ({pool} with {allocator}; RaaS frees pages of a per-head or "
            "MLA-latent paged pool, or of a hybrid sliding-window pair of per-head pools of one K/V shape, only); "
            "use --kv-policy dense for this model", lambda x: not pool_supported(x.pool, x.allocator)),
    Refusal("loaded.hybrid-swa-backend", "SGLang built a hybrid sliding-window pool (gpt-oss: window layers in "
            "their own pool) and a backend other than triton would run it",
            "a hybrid sliding-window KV pool on {swa_pool_backends} backend (RaaS maps the window layers' resident "
            "tokens into their pool on triton only); use --attention-backend triton, add "
            "--disable-hybrid-swa-memory (one pool), or use --kv-policy dense for this model",
            lambda x: x.pool == HYBRID_SWA[0] and (not x.backends or bool(x.backends - HYBRID_SWA_BACKENDS))),
    Refusal("loaded.attention-layers", "the attention layers found in the loaded model do not cover the KV pool's "
            "layers one to one (e.g. SGLang's Transformers backend, `--model-impl transformers`, keeps them outside "
            "the module tree; Gemma 3n/4's KV-shared layers read another layer's KV)",
            "a model whose attention layers RaaS cannot read (KV pool layers {unread_layers} have no single "
            "RadixAttention in the model's modules: their windows and caps are unknown); use --kv-policy dense, or "
            "SGLang's native implementation of the model", lambda x: bool(x.unread_layers)),
    Refusal("loaded.page-size", "the allocator's page size differs from the one RaaS fixed",
            "a page size of {allocator_page_size} tokens in SGLang's allocator (RaaS fixed {page_size}: evicting "
            "RaaS pages would free other tokens); use --kv-policy dense with these options",
            lambda x: x.allocator_page_size != x.page_size),
    Refusal("loaded.sliding-window", "an attention layer of the loaded model has a sliding window (Gemma 3, "
            "OLMo 3, EXAONE 4, gpt-oss, ...) and a backend other than "
            "torch_native or triton would run it",
            "sliding-window attention ({windowed}) on {window_backends} backend (RaaS applies a layer's window to "
            "the resident tokens on torch_native and triton only); use --attention-backend triton or "
            "torch_native, or --kv-policy dense for this model",
            lambda x: bool(x.windowed) and (not x.backends or bool(x.backends - WINDOW_BACKENDS))),
    Refusal("loaded.torch-native-features", "torch_native would run a model with logit soft-capping (Gemma 2, "
            "Grok), attention sinks or xai temperature",
            "{native_features} on torch_native (SGLang's torch_native attention does not apply it, so no budget "
            "could be exact to the model); use --kv-policy dense for this model",
            lambda x: bool(x.native_features) and "torch_native" in x.backends),
    Refusal("loaded.exact-kernel-features", "`--raas-score exact` on triton for a model with logit capping, "
            "attention sinks, scaled KV, xai temperature or sliding windows",
            "--raas-score exact on triton for a model with {kernel_features} (the plugin's decode kernel does not "
            "apply them); use --raas-score quest", lambda x: x.config.exact_kernel and bool(x.kernel_features)),
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
    Allowed("--strip-thinking-cache", "a finished reasoning request gives the tree only its prompt pages; its decode "
            "pages (the thinking, evicted or not) are freed with the evicted pages cut out, and the next turn "
            "re-prefills the answer without the thinking", "tests/test_strip_thinking.py::test_three_turns"),
)

ROWS = {row.id: row for row in (*FLAG, *STARTUP, *LOADED, *REQUEST)}


def _hit(row: Refusal, context: Startup) -> bool:
    if row.model and context.model is None:  # no model config (an SGLang path that builds none): the loaded rows
        return False  # still check what SGLang built
    try:
        return bool(row.refuses(context))
    except AttributeError as err:  # NOTE: never "nothing to refuse": a field the row reads is gone (an upgrade)
        raise VersionMismatch(f"raas_sglang: refusal row {row.id} cannot read {err} (is this SGLang 0.5.23?); "
                              "refusing to start without checking it") from None


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


def loaded_refusal(context: Loaded) -> str | None:
    """The one line that refuses this server once its model is loaded (all matching LOADED rows); None when it may
    serve (always for dense)."""
    if not context.config.enabled:
        return None
    hits = [row for row in LOADED if _hit(row, context)]
    if not hits:
        return None
    return f"--kv-policy {context.policy} does not support " + "; nor ".join(r.text(context) for r in hits)
