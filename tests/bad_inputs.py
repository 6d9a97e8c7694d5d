"""The bad-input cases: each exercises one row of the refusal registry (`raas_sglang/refusals.py`) and is a test.
docs/bad-input.md is rendered from the registry and these cases (`python tests/bad_inputs.py > docs/bad-input.md`);
tests/test_bad_input_doc.py fails when it is stale, when a row has no case or when a case names an unknown row.

- `Launch`: extra flags for the stock launcher, which must exit printing one line, `error: ` + the message
  (tests/test_cli.py; the rows that `config.resolve` checks also run as unit tests in tests/test_config.py).
- `Request`: `custom_params` (and `beam_width`) of a request, checked against a server config (unit, in
  tests/test_config.py). With the default server the same change is also sent to `/generate` and
  `/v1/chat/completions` of a `--kv-policy raas --raas-budget 256` server, which must answer HTTP 400 with the
  message and keep serving (tests/test_raas_eviction.py, through `REQUESTS`).
- `Resolved`: startup rows checked on resolved server-args values and model config attributes (unit, in
  tests/test_config.py), for what this CPU test machine cannot launch (tp 2, CUDA graphs on a CUDA device, ...)
  or has no model for (MLA, sliding window, encoder-decoder). `BASE_VIEW` is the resolved view of a plain
  `--kv-policy raas` CPU server; tests/test_cli.py checks its names against a real resolved SGLang view.

A new refusal row gets at least one case here, named by the row's id.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Launch(NamedTuple):
    name: str
    row: str
    argv: list[str]
    message: str
    env: dict[str, str] = {}  # set in the launcher's environment


class ModelLaunch(NamedTuple):
    """The stock launcher on a tiny model of `family` (raas_sglang.dev.family_models) with these flags: refused at
    startup (a `startup` row, before any child starts) or once the model loaded (a `loaded` row: the scheduler
    stops and the launch fails with the message in its log). Run by tests/test_model_matrix.py."""

    name: str
    row: str
    family: str
    argv: list[str]
    message: str


class Built(NamedTuple):
    """A `loaded` row checked on what SGLang builds, in-process (tests/test_model_checks.py): real `RadixAttention`
    layers made with these keyword arguments (under a module holding sink logits with `sinks`), the names of an
    SGLang KV pool and allocator class (checked to exist), the allocator's page size, and the RaaS flags."""

    name: str
    row: str
    message: str
    layers: tuple = ({},)  # RadixAttention kwargs changed from BASE_LAYER
    pool: str = "MHATokenToKVPool"
    allocator: str = "PagedTokenToKVPoolAllocator"
    page_size: int = 16
    pool_layers: tuple | None = None  # the layer ids the KV pool holds; None: the layers' ids
    sinks: bool = False
    flags: dict[str, Any] = {"kv_policy": "raas"}
    exact_kernel: bool = False
    backends: tuple = ()  # the resolved attention backends (none: unknown, as a window row reads it)


class Request(NamedTuple):
    name: str
    row: str
    custom_params: dict[str, Any]
    message: str
    server: dict[str, Any] | None = None  # RaasConfig fields; None: TEST_SERVER, and the case also runs over HTTP
    beam_width: int | None = None

    @property
    def http(self) -> bool:
        return self.server is None and self.beam_width is None


class Resolved(NamedTuple):
    name: str
    row: str
    view: dict[str, Any]  # changes to BASE_VIEW; a dotted name sets a nested attribute
    message: str
    model: dict[str, Any] = {}  # changes to BASE_MODEL
    flags: dict[str, Any] = {"kv_policy": "raas"}  # the RaaS flags (config.FLAGS attributes), at page size 16


# the server of the HTTP request cases (tests/test_raas_eviction.py: --kv-policy raas --raas-budget 256)
TEST_SERVER = {"policy": "raas", "budget_tokens": 256, "page_size": 16}
BASE_VIEW = {
    "speculative_algorithm": None, "disaggregation_mode": "null", "disaggregation_decode_retraction_backup": None,
    "disaggregation_decode_enable_radix_cache": False, "disaggregation_decode_enable_offload_kvcache": False,
    "enable_hierarchical_cache": False,
    "tp_size": 1, "pp_size": 1, "dp_size": 1, "attn_cp_size": 1, "dcp_size": 1, "moe_dp_size": 1,
    "enable_kv_cache_sharding": False, "attn_dp_size": 1, "enable_dp_attention": False,
    "attention_backend": "torch_native", "decode_attention_backend": None, "prefill_attention_backend": None,
    "enable_mixed_chunk": False, "enable_streaming_session": False, "enable_torch_compile": False,
    "cuda_graph_config.decode.backend": "disabled", "cuda_graph_config.prefill.backend": "disabled", "device": "cpu",
    "enable_flexkv": False, "radix_cache_backend": None, "enable_lmcache": False, "enable_session_radix_cache": False,
    "enable_two_batch_overlap": False, "enable_single_batch_overlap": False,
    "tokenizer_worker_num": 1, "page_size": 16, "kv_cache_dtype": "auto",
}
# the RadixAttention of a Built case's layer: 4 query heads, 2 KV heads, head dim 16 (the family models' shape)
BASE_LAYER = {"num_heads": 4, "head_dim": 16, "scaling": 0.25, "num_kv_heads": 2, "layer_id": 0}
BASE_MODEL = {"context_len": 32768, "attention_arch": "MHA", "is_hybrid_swa": False, "is_encoder_decoder": False,
              "attention_chunk_size": None, "hf_text_config.model_type": "llama"}

_RAAS = ["--kv-policy", "raas"]
_POOL = ["--max-total-tokens", "4096"]
_UNSUPPORTED = "--kv-policy raas does not support "

CASES = (
    Launch("unknown-policy", "flag.kv-policy", ["--kv-policy", "lru"],
           "--kv-policy: must be one of dense, raas, streaming, h2o, quest, raas+quest"),
    Launch("budget-not-int", "flag.raas-budget.type", [*_RAAS, "--raas-budget", "lots"],
           "--raas-budget: must be a positive integer"),
    Launch("budget-zero", "flag.raas-budget.type", [*_RAAS, "--raas-budget", "0"],
           "--raas-budget: must be a positive integer"),
    Launch("budget-negative", "flag.raas-budget.type", [*_RAAS, "--raas-budget=-64"],
           "--raas-budget: must be a positive integer"),
    Launch("budget-fraction", "flag.raas-budget.type", [*_RAAS, "--raas-budget", "64.5"],
           "--raas-budget: must be a positive integer"),
    Launch("budget-one-page", "flag.raas-budget.min-pages", [*_RAAS, "--raas-budget", "16"],
           "--raas-budget: must be at least 2 pages = 32 tokens"),
    Launch("budget-one-page-p64", "flag.raas-budget.min-pages", [*_RAAS, "--page-size", "64", "--raas-budget", "64"],
           "--raas-budget: must be at least 2 pages = 128 tokens at page size 64"),
    Launch("budget-huge", "flag.raas-budget.context", [*_RAAS, "--raas-budget", str(10**12), *_POOL],
           "--raas-budget: must be at most the context length (32768 tokens), got 1000000000000"),
    Launch("ratio-zero", "flag.raas-refresh-ratio", [*_RAAS, "--raas-refresh-ratio", "0"],
           "--raas-refresh-ratio: must be a number in (0, 1]"),
    Launch("ratio-above-one", "flag.raas-refresh-ratio", [*_RAAS, "--raas-refresh-ratio", "1.5"],
           "--raas-refresh-ratio: must be a number in (0, 1]"),
    Launch("ratio-not-number", "flag.raas-refresh-ratio", [*_RAAS, "--raas-refresh-ratio", "half"],
           "--raas-refresh-ratio: must be a number in (0, 1]"),
    Launch("ratio-nan", "flag.raas-refresh-ratio", [*_RAAS, "--raas-refresh-ratio", "nan"],
           "--raas-refresh-ratio: must be a number in (0, 1]"),
    Launch("threshold-negative", "flag.raas-refresh-threshold", [*_RAAS, "--raas-refresh-threshold=-1"],
           "--raas-refresh-threshold: must be a finite number >= 0, got '-1'"),
    Launch("raas-flag-with-dense", "flag.budgeted-only", ["--kv-policy", "dense", "--raas-budget", "256"],
           "--raas-budget: only allowed with --kv-policy raas"),
    Launch("raas-flag-without-policy", "flag.budgeted-only", ["--raas-refresh-ratio", "0.25"],
           "--raas-refresh-ratio: only allowed with --kv-policy raas"),
    Launch("score-without-policy", "flag.budgeted-only", ["--raas-score", "quest"],
           "--raas-score: only allowed with --kv-policy raas"),
    Launch("score-unknown", "flag.raas-score", [*_RAAS, "--raas-score", "max"],
           "--raas-score: must be one of auto, exact, quest"),
    Launch("reduce-unknown", "flag.raas-reduce", [*_RAAS, "--raas-reduce", "sum"],
           "--raas-reduce: must be one of mean-mean, max-mean, mean-max, max-max"),
    Launch("reserve-one", "flag.raas-reserve", [*_RAAS, "--raas-reserve", "1"],
           "--raas-reserve: must be a number in [0, 1)"),
    # combinations RaaS does not support yet: refused after resolution, before any child process starts
    Launch("raas-with-fa3", "startup.attention-backend", [*_RAAS, "--attention-backend", "fa3", *_POOL],
           _UNSUPPORTED + "attention backend fa3; use --attention-backend flashinfer or"),
    Launch("exact-on-flashinfer", "startup.exact-score-backend",
           [*_RAAS, "--raas-score", "exact", "--attention-backend", "flashinfer", *_POOL],
           _UNSUPPORTED + "--raas-score exact on the flashinfer backend"),
    Launch("quest-on-triton", "startup.selection-backend",
           ["--kv-policy", "quest", "--attention-backend", "triton", *_POOL],
           "--kv-policy quest does not support Quest page selection on the triton/flashinfer backends"),
    Launch("raas-with-hicache", "startup.hierarchical-cache", [*_RAAS, "--enable-hierarchical-cache", *_POOL],
           _UNSUPPORTED + "the hierarchical cache (its host write-back"),
    Launch("streaming-with-mixed-chunk", "startup.mixed-chunk",
           ["--kv-policy", "streaming", "--enable-mixed-chunk", *_POOL],
           "--kv-policy streaming does not support mixed chunked prefill"),
    # options that change how the tree is filled, rows are freed, batches overlap or requests are validated
    Launch("flexkv", "startup.flexkv", [*_RAAS, "--enable-flexkv", *_POOL], _UNSUPPORTED + "FlexKV"),
    Launch("radix-cache-backend", "startup.radix-cache-backend", [*_RAAS, "--radix-cache-backend", "flexkv", *_POOL],
           _UNSUPPORTED + "a custom radix-cache backend"),
    Launch("lmcache", "startup.lmcache", [*_RAAS, "--enable-lmcache", *_POOL], _UNSUPPORTED + "LMCache"),
    Launch("session-radix-cache", "startup.session-radix-cache", [*_RAAS, "--enable-session-radix-cache", *_POOL],
           _UNSUPPORTED + "the session radix cache; drop --enable-session-radix-cache"),
    Launch("single-batch-overlap", "startup.single-batch-overlap", [*_RAAS, "--enable-single-batch-overlap", *_POOL],
           _UNSUPPORTED + "single-batch overlap; drop --enable-single-batch-overlap"),
    Launch("rust-server", "startup.rust-server", [*_RAAS, *_POOL],
           _UNSUPPORTED + "SGLang's Rust front end (SGLANG_RUST_SERVER=1", env={"SGLANG_RUST_SERVER": "1"}),
    Launch("tokenizer-workers", "startup.tokenizer-workers", [*_RAAS, "--tokenizer-worker-num", "2", *_POOL],
           _UNSUPPORTED + "several tokenizer workers"),
    # SGLang itself refuses two-batch overlap on this CPU model before the plugin's check: checked resolved
    Resolved("two-batch-overlap", "startup.two-batch-overlap", {"enable_two_batch_overlap": True},
             _UNSUPPORTED + "two-batch overlap"),
    Resolved("speculative", "startup.speculative", {"speculative_algorithm": "EAGLE"},
             _UNSUPPORTED + "speculative decoding (draft and verify steps allocate through alloc_for_spec_decode"),
    Resolved("pd-prefill", "startup.disaggregation-prefill", {"disaggregation_mode": "prefill"},
             _UNSUPPORTED + "a prefill server of PD disaggregation (it never decodes: nothing to evict); start the "
             "prefill server with --kv-policy dense"),
    Resolved("pd-decode-host-pool", "startup.disaggregation-retraction-backup",
             {"disaggregation_mode": "decode", "disaggregation_decode_retraction_backup": None},
             _UNSUPPORTED + "a decode server whose retraction backup is the host pool"),
    Resolved("pd-decode-radix", "startup.disaggregation-decode-radix",
             {"disaggregation_mode": "decode", "disaggregation_decode_retraction_backup": "cpu_tensor",
              "disaggregation_decode_enable_radix_cache": True},
             _UNSUPPORTED + "the decode server's radix cache (not tested with evicted pages)"),
    Resolved("pd-decode-offload", "startup.disaggregation-decode-offload",
             {"disaggregation_mode": "decode", "disaggregation_decode_retraction_backup": "cpu_tensor",
              "disaggregation_decode_enable_offload_kvcache": True},
             _UNSUPPORTED + "decode-side KV offload (it stores rows with evicted pages)"),
    Resolved("quest-tp-2", "startup.selection-tp", {"tp_size": 2},
             "--kv-policy quest does not support Quest page selection under tensor parallel", flags={"kv_policy": "quest"}),
    Resolved("raas+quest-tp-4", "startup.selection-tp", {"tp_size": 4},
             "--kv-policy raas+quest does not support Quest page selection under tensor parallel",
             flags={"kv_policy": "raas+quest"}),
    Resolved("dsa-model", "startup.mla-model", {"attention_backend": "triton"},
             _UNSUPPORTED + "DSA attention (DeepSeek V3.2's indexer selects the KV itself",
             model={"attention_arch": "MLA", "hf_text_config.index_topk": 2048}),
    Resolved("pp-2", "startup.pp-size", {"pp_size": 2}, _UNSUPPORTED + "pipeline parallel (each stage holds only"),
    Resolved("attn-cp-2", "startup.attn-cp-size", {"tp_size": 2, "attn_cp_size": 2},
             _UNSUPPORTED + "attention context parallel"),
    Resolved("dcp-2", "startup.dcp-size", {"tp_size": 2, "dcp_size": 2}, _UNSUPPORTED + "decode context parallel"),
    Resolved("moe-dp-2", "startup.moe-dp-size", {"tp_size": 2, "moe_dp_size": 2}, _UNSUPPORTED + "MoE data parallel"),
    Resolved("kv-cache-sharding", "startup.kv-cache-sharding", {"tp_size": 2, "enable_kv_cache_sharding": True},
             _UNSUPPORTED + "KV cache sharding"),
    Resolved("attn-dp-2", "startup.attn-dp-size", {"tp_size": 2, "dp_size": 2, "attn_dp_size": 2},
             _UNSUPPORTED + "attention data parallel"),
    Resolved("dp-attention", "startup.attn-dp-size", {"tp_size": 2, "dp_size": 2, "enable_dp_attention": True},
             _UNSUPPORTED + "attention data parallel"),
    Resolved("decode-backend-fa3", "startup.attention-backend", {"decode_attention_backend": "fa3"},
             _UNSUPPORTED + "attention backend fa3; use --attention-backend flashinfer or torch_native or triton"),
    Resolved("streaming-session", "startup.streaming-session", {"enable_streaming_session": True},
             _UNSUPPORTED + "streaming sessions; drop --enable-streaming-session"),
    Resolved("torch-compile", "startup.torch-compile", {"enable_torch_compile": True},
             _UNSUPPORTED + "torch.compile / CPU graphs (they bypass the RaaS decode path)"),
    Resolved("cuda-graph-decode", "startup.cuda-graph-decode",
             {"device": "cuda", "cuda_graph_config.decode.backend": "full"},
             _UNSUPPORTED + "CUDA graphs for decode; add --cuda-graph-backend-decode=disabled"),
    Resolved("cuda-graph-prefill-full", "startup.cuda-graph-prefill-full",
             {"device": "cuda", "cuda_graph_config.prefill.backend": "full"},
             _UNSUPPORTED + "fully captured CUDA graphs for prefill (replayed extends skip the RaaS attention hooks); "
             "use --cuda-graph-backend-prefill=breakable or disabled"),
    Resolved("page-size-changed", "startup.page-size", {"page_size": 64},
             _UNSUPPORTED + "a page size of 64 tokens (SGLang changed it after RaaS fixed 16"),
    Launch("fp8-kv-torch-native", "startup.fp8-kv-torch-native", [*_RAAS, "--kv-cache-dtype", "fp8_e4m3", *_POOL],
           _UNSUPPORTED + "an fp8 KV cache on torch_native"),
    # the model matrix (docs/models.md): tiny models of each family, built with transformers' own config classes
    ModelLaunch("deepseek-v2-flashinfer", "startup.mla-model", "deepseek-v2",
                [*_RAAS, "--attention-backend", "flashinfer", *_POOL],
                _UNSUPPORTED + "MLA attention on the flashinfer backend (RaaS reads the latent cache on torch_native "
                "and triton only"),
    # (SGLang's CPU engine needs its Mamba cache without snapshots for this family: no_buffer, page 1)
    ModelLaunch("qwen3-next", "startup.linear-attention-model", "qwen3-next",
                [*_RAAS, "--page-size", "1", "--mamba-radix-cache-strategy", "no_buffer", *_POOL],
                _UNSUPPORTED + "hybrid linear-attention or state-space models"),
    ModelLaunch("gpt-oss-pd-decode", "startup.hybrid-swa-disaggregation", "gpt-oss",
                [*_RAAS, "--attention-backend", "triton", "--disaggregation-mode", "decode",
                 "--disaggregation-transfer-backend", "mooncake_tcp", "--disaggregation-decode-retraction-backup",
                 "cpu_tensor", *_POOL],
                _UNSUPPORTED + "a hybrid sliding-window KV pool on a PD decode server"),
    # Gemma 4's on-device variants: the last layers attend with an earlier layer's KV (two layers on one)
    ModelLaunch("gemma4-kv-shared", "loaded.attention-layers", "gemma4-kv-shared",
                [*_RAAS, "--attention-backend", "triton", *_POOL],
                _UNSUPPORTED + "a model whose attention layers RaaS cannot read (KV pool layers"),
    ModelLaunch("llama4", "startup.chunked-attention-model", "llama4", [*_RAAS, *_POOL],
                _UNSUPPORTED + "chunked-attention models"),
    ModelLaunch("gemma2", "loaded.torch-native-features", "gemma2", [*_RAAS, *_POOL],
                _UNSUPPORTED + "logit soft-capping (2 of 2 layers, cap 50) on torch_native"),
    Built("dsa-pool", "loaded.kv-pool", _UNSUPPORTED + "the KV pool SGLang built for this model (DSATokenToKVPool "
          "with PagedTokenToKVPoolAllocator", pool="DSATokenToKVPool"),
    Built("swa-allocator", "loaded.kv-pool", _UNSUPPORTED + "the KV pool SGLang built for this model "
          "(MHATokenToKVPool with SWATokenToKVPoolAllocator", allocator="SWATokenToKVPoolAllocator"),
    Built("hybrid-pool-torch-native", "loaded.hybrid-swa-backend", _UNSUPPORTED + "a hybrid sliding-window KV pool "
          "on torch_native backend (RaaS maps the window layers' resident tokens into their pool on triton only",
          layers=({}, {"layer_id": 1, "sliding_window_size": 31}), pool="SWAKVPool",
          allocator="SWATokenToKVPoolAllocator", backends=("torch_native",)),
    Built("layers-outside-modules", "loaded.attention-layers", _UNSUPPORTED + "a model whose attention layers RaaS "
          "cannot read (KV pool layers 0, 1 have no single RadixAttention", layers=(), pool_layers=(0, 1)),
    Built("allocator-page-size", "loaded.page-size", _UNSUPPORTED + "a page size of 64 tokens in SGLang's allocator "
          "(RaaS fixed 16", page_size=64),
    Built("window-layer", "loaded.sliding-window", _UNSUPPORTED + "sliding-window attention (1 of 2 layers, window "
          "511) on an unknown backend", layers=({}, {"layer_id": 1, "sliding_window_size": 511})),
    Built("window-layer-flashinfer", "loaded.sliding-window", _UNSUPPORTED + "sliding-window attention (1 of 2 "
          "layers, window 511) on flashinfer backend", layers=({}, {"layer_id": 1, "sliding_window_size": 511}),
          backends=("flashinfer", "triton")),
    Built("exact-kernel-softcap", "loaded.exact-kernel-features", _UNSUPPORTED + "--raas-score exact on triton for "
          "a model with logit capping (the plugin's decode kernel", layers=({"logit_cap": 30.0},),
          flags={"kv_policy": "raas", "raas_score": "exact"}, exact_kernel=True),
    Built("exact-kernel-window", "loaded.exact-kernel-features", _UNSUPPORTED + "--raas-score exact on triton for "
          "a model with sliding windows", layers=({}, {"layer_id": 1, "sliding_window_size": 31}),
          flags={"kv_policy": "raas", "raas_score": "exact"}, exact_kernel=True, backends=("triton",)),
    Built("exact-kernel-sinks", "loaded.exact-kernel-features", _UNSUPPORTED + "--raas-score exact on triton for "
          "a model with attention sinks", sinks=True, flags={"kv_policy": "raas", "raas_score": "exact"},
          exact_kernel=True),
    Resolved("encoder-decoder-model", "startup.encoder-decoder-model", {},
             _UNSUPPORTED + "encoder-decoder models; use --kv-policy dense for this model",
             model={"is_encoder_decoder": True}),
    Resolved("budget-above-context", "flag.raas-budget.context", {},
             "--raas-budget: must be at most the context length (4096 tokens), got 8192",
             model={"context_len": 4096}, flags={"kv_policy": "h2o", "raas_budget": 8192}),
    Resolved("two-at-once", "startup.dcp-size", {"tp_size": 2, "dcp_size": 2, "enable_torch_compile": True},
             _UNSUPPORTED + "torch.compile / CPU graphs (they bypass the RaaS decode path); drop "
             "--enable-torch-compile; nor decode context parallel"),
    Request("budget-above-server", "request.raas-budget.above-server", {"raas_budget": 10**9},
            "custom_params.raas_budget: must be at most"),
    Request("budget-astronomic", "request.raas-budget.above-server", {"raas_budget": 10**40},
            "custom_params.raas_budget: must be at most"),
    Request("budget-one-page", "request.raas-budget.min-pages", {"raas_budget": 16},
            "custom_params.raas_budget: must be at least 2 pages"),
    Request("budget-string", "request.raas-budget.type", {"raas_budget": "64"},
            "custom_params.raas_budget: must be a positive integer"),
    Request("budget-negative", "request.raas-budget.type", {"raas_budget": -64},
            "custom_params.raas_budget: must be a positive integer"),
    Request("budget-float", "request.raas-budget.type", {"raas_budget": 64.5},
            "custom_params.raas_budget: must be a positive integer"),
    Request("budget-bool", "request.raas-budget.type", {"raas_budget": True},
            "custom_params.raas_budget: must be a positive integer"),
    Request("custom-params-list", "request.custom-params.type", [1, 2], "custom_params: must be a JSON object, got list",
            server=TEST_SERVER),
    Request("quest-on-triton", "request.kv-policy.selection-backend", {"kv_policy": "quest"},
            "custom_params.kv_policy: 'quest' is not available on this server (Quest page selection runs on the "
            "torch_native",
            server={**TEST_SERVER, "score": "quest", "decode_backend": "triton"}),
    Request("policy-unknown", "request.kv-policy", {"kv_policy": "lru"},
            "custom_params.kv_policy: must be one of dense, raas"),
    Request("policy-not-string", "request.kv-policy", {"kv_policy": 3},
            "custom_params.kv_policy: must be one of dense, raas"),
    Request("quest-without-bounds", "request.kv-policy.bounds", {"kv_policy": "quest"},
            "custom_params.kv_policy: 'quest' needs page key bounds"),
    Request("trace-not-bool", "request.raas-trace", {"raas_trace": "yes"},
            "custom_params.raas_trace: must be true or false"),
    Request("trace-number", "request.raas-trace", {"raas_trace": 1},
            "custom_params.raas_trace: must be true or false"),
    Request("beam-search", "request.beam-search", {}, "beam_width: beam search is not supported with --kv-policy raas",
            beam_width=2),
    Request("budgeted-policy-on-dense", "request.kv-policy.dense-server", {"kv_policy": "raas"},
            "custom_params.kv_policy: 'raas' needs a server started with a budgeted --kv-policy",
            server={"policy": "dense", "page_size": 1}),
    Request("quest-on-tp-2", "request.kv-policy.tp", {"kv_policy": "quest"},
            "custom_params.kv_policy: 'quest' is not available under tensor parallel (--tp-size 2",
            server={**TEST_SERVER, "score": "quest", "tp_size": 2}),
    Request("quest-on-exact-kernel", "request.kv-policy.exact-kernel", {"kv_policy": "raas+quest"},
            "custom_params.kv_policy: 'raas+quest' is not available on this server",
            server={**TEST_SERVER, "score": "exact", "exact_kernel": True}),
)

LAUNCH = {c.name: c for c in CASES if isinstance(c, Launch)}
RESOLVED = {c.name: c for c in CASES if isinstance(c, Resolved)}
REQUEST_CASES = {c.name: c for c in CASES if isinstance(c, Request)}
MODEL_LAUNCH = {c.name: c for c in CASES if isinstance(c, ModelLaunch)}
BUILT = {c.name: c for c in CASES if isinstance(c, Built)}
# name -> (extra launch flags, message): the startup rows tests/test_cli.py launches (with `LAUNCH[name].env`)
FLAGS = {c.name: (c.argv, c.message) for c in LAUNCH.values()}
# name -> (custom_params, message): the request rows sent over HTTP (tests/test_raas_eviction.py, bench/soak.py)
REQUESTS = {c.name: (c.custom_params, c.message) for c in REQUEST_CASES.values() if c.http}


def _input(case) -> str:
    if isinstance(case, Launch):
        env = "".join(f"{k}={v} " for k, v in case.env.items())
        return f"`{env}{' '.join(case.argv)}`"
    if isinstance(case, ModelLaunch):
        return f"tiny `{case.family}` model, `{' '.join(case.argv)}`"
    if isinstance(case, Built):
        flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in case.flags.items())
        layers = "; ".join(", ".join(f"{k}={v}" for k, v in layer.items()) or "plain" for layer in case.layers)
        extra = ", sinks" if case.sinks else ""
        pool_layers = "" if case.pool_layers is None else f", pool layers {list(case.pool_layers)}"
        return (f"`{flags}`, layers: `{layers}`{extra}, `{case.pool}` / `{case.allocator}`, page "
                f"{case.page_size}{pool_layers}")
    if isinstance(case, Resolved):
        flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in case.flags.items())
        changes = [f"{k}={v}" for k, v in case.view.items()] + [f"model.{k}={v}" for k, v in case.model.items()]
        return f"`{flags}`, resolved: `{', '.join(changes)}`"
    text = f"`custom_params: {case.custom_params}`"
    if case.beam_width is not None:
        text += f", `beam_width: {case.beam_width}`"
    if case.server is not None:
        text += f", server: `{case.server}`"
    return text


def _test(case) -> str:
    if isinstance(case, Launch):
        return "launch"
    if isinstance(case, ModelLaunch):
        return "model"
    if isinstance(case, Built):
        return "built"
    return "http" if isinstance(case, Request) and case.http else "unit"


def render() -> str:
    """docs/bad-input.md (regenerate: `python tests/bad_inputs.py > docs/bad-input.md`)."""
    from raas_sglang.refusals import ALLOWED, ROWS, show

    lines = [
        "# Bad input: what RaaS refuses, and how",
        "",
        "Generated by `python tests/bad_inputs.py > docs/bad-input.md` from the refusal registry",
        "(`raas_sglang/refusals.py`) and the cases of `tests/bad_inputs.py`, each a test; tests/test_bad_input_doc.py",
        "fails when this file is stale, when a row has no case or when a case names an unknown row.",
        "",
        "- `flag` rows: a bad value of a RaaS flag. `python -m sglang.launch_server` exits non-zero and prints one",
        "  line, `error: ` + the message (no traceback); `sgl.Engine` raises `raas_sglang.config.ConfigError` with",
        "  the same text.",
        "- `startup` rows: what a budgeted `--kv-policy` cannot run with yet, checked once SGLang has resolved the",
        "  server args, before any child process starts. One line as above: `error: --kv-policy POLICY does not",
        "  support ` + the messages of all matching rows, joined by `; nor `.",
        "- `loaded` rows: what SGLang actually built for the model (each attention layer, the KV pool and",
        "  allocator), checked in every scheduler process once the model loaded, before it serves. The scheduler",
        "  logs `raas_sglang: --kv-policy POLICY does not support ...` and stops; the launch fails.",
        "- `request` rows: `/generate`, the OpenAI endpoints and `sgl.Engine` answer HTTP 400 (a `ValueError`) with",
        "  the message of the first matching row, in this order; the server keeps serving.",
        "",
        "`{name}` in a message is filled in from the input.",
        "",
        "| row | refused when | message |",
        "|---|---|---|",
    ]
    lines += [f"| `{r.id}` | {show(r.when)} | `{show(r.message)}` |" for r in ROWS.values()]
    lines += [
        "",
        "## Cases",
        "",
        "`launch`: the stock launcher with these flags (tests/test_cli.py). `model`: the stock launcher on a tiny",
        "model of that family (`raas_sglang.dev.family_models`, tests/test_model_matrix.py). `built`: the row's",
        "check on real SGLang `RadixAttention` layers and pool/allocator classes (tests/test_model_checks.py). `http`: a valid request with this change,",
        "sent to `/generate` and `/v1/chat/completions` of a `--kv-policy raas --raas-budget 256` server, which must",
        "keep serving (tests/test_raas_eviction.py). `unit`: the registry's check on these values",
        "(tests/test_config.py; every request case runs there too): requests to other servers, and server args or",
        "models the CPU test machine cannot start; a `resolved` input changes the resolved view of a plain",
        "`--kv-policy raas` CPU server (`BASE_VIEW`: " + ", ".join(f"{k}={v}" for k, v in BASE_VIEW.items()) + ").",
        "",
        "| case | row | test | input | message (prefix) |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {c.name} | `{c.row}` | {_test(c)} | {_input(c)} | `{c.message}` |" for c in CASES]
    lines += [
        "",
        "## Allowed with evictions",
        "",
        "Options that change how the radix tree is filled or how rows are freed, and that a test shows working with",
        "evictions (`raas_sglang.refusals.ALLOWED`); every other such option has a `startup` row above.",
        "",
        "| option | why it is safe | test |",
        "|---|---|---|",
    ]
    lines += [f"| `{a.option}` | {a.why} | `{a.test}` |" for a in ALLOWED]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
