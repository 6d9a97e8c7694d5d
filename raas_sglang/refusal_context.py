"""What the refusal rows (`raas_sglang/refusals.py`) read, and how a row is written: the `Refusal` record, the
contexts a row's check gets (`Startup`: the resolved server before any child starts; `Loaded`: what SGLang built
in a scheduler process once the model loaded; `Request`: one request's RaaS fields) and the message templating.

Imports no SGLang: the contexts hold SGLang's objects (or plain facts read from them by `patches/`) and are read
by attribute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple

from raas_sglang import config as cfg
from raas_sglang.config import RaasConfig
from raas_sglang.policies import DENSE

SUPPORTED_BACKENDS = frozenset({"torch_native", "triton", "flashinfer"})
WINDOW_BACKENDS = frozenset({"torch_native", "triton"})  # those on which RaaS applies a layer's sliding window
# those on which RaaS reads an MLA model's latent cache (torch_native: every extend through the absorbed path,
# patches/mla_torch_native.py)
MLA_BACKENDS = frozenset({"torch_native", "triton"})
# the KV pool and allocator classes whose pages RaaS frees: one per-head K and V buffer per layer (MHA), or one
# latent buffer per layer (MLA: c_KV then k_pe, one "head"; V is a view of c_KV), behind one paged allocator (read
# by class name from what SGLang built; anything else, a DSA pool included, is refused after load)
SUPPORTED_POOLS = frozenset({"MHATokenToKVPool", "MLATokenToKVPool"})
SUPPORTED_ALLOCATORS = frozenset({"PagedTokenToKVPoolAllocator", "TokenToKVPoolAllocator"})
# a hybrid sliding-window pool (gpt-oss): full layers and window layers in two per-head pools, one allocator for both
# with a full -> window slot mapping (patches/swa_pool.py); read as "SWAKVPool" only when both sub-pools are per-head
HYBRID_SWA = ("SWAKVPool", "SWATokenToKVPoolAllocator")
HYBRID_SWA_BACKENDS = frozenset({"triton"})  # those whose window lists RaaS maps into the window pool


def pool_supported(pool: str, allocator: str) -> bool:
    """Whether RaaS frees pages of this pool behind this allocator (class names)."""
    return (pool in SUPPORTED_POOLS and allocator in SUPPORTED_ALLOCATORS) or (pool, allocator) == HYBRID_SWA


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
    supported_pools = property(lambda self: ", ".join(sorted(SUPPORTED_POOLS)))


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
    """What the startup rows read: SGLang's resolved server args (`view`, read by attribute), the RaaS config, the
    model config (SGLang's `ModelConfig`; None where it could not be built) and whether SGLang classes the model
    as hybrid linear attention (decided by `patches/startup_checks.py` with SGLang's own registry), and whether
    SGLang's Rust front end is on (`SGLANG_RUST_SERVER`)."""

    def __init__(self, view: Any, config: RaasConfig, model: Any = None, linear_attention: bool = False,
                 rust_server: bool = False):
        self.view, self.config, self.model = view, config, model
        self.linear_attention = linear_attention  # SGLang builds linear-attention (Mamba, GDN, ...) layers
        self.rust_server = rust_server  # SGLANG_RUST_SERVER: SGLang's Rust HTTP front end serves the requests

    policy = property(lambda self: self.config.policy)
    budget = property(lambda self: self.config.budget_tokens)
    page_size = property(lambda self: self.config.page_size)
    context = property(lambda self: int(self.model.context_len))
    resolved_page_size = property(lambda self: int(arg(self.view, "page_size") or 1))
    fp8_kv = property(lambda self: str(arg(self.view, "kv_cache_dtype")).startswith("fp8"))

    @property
    def attention_arch(self) -> str:
        arch = self.model.attention_arch  # SGLang's AttentionArch enum
        return getattr(arch, "name", str(arch))

    @property
    def decode_backend(self) -> str | None:
        return arg(self.view, "decode_attention_backend") or arg(self.view, "attention_backend")

    @property
    def mla_blocker(self) -> str:
        """Why this MLA model cannot be served under RaaS, in words ('' when it can: on torch_native and triton;
        not DSA)."""
        if getattr(self.model.hf_text_config, "index_topk", None) is not None:
            return "DSA attention (DeepSeek V3.2's indexer selects the KV itself, in its own pool)"
        others = sorted(self.backends - MLA_BACKENDS)
        if not self.backends:  # NOTE: fail closed: SGLang resolved no backend that could be checked
            return "MLA attention with no resolved attention backend"
        if others:
            return (f"MLA attention on the {', '.join(others)} backend (RaaS reads the latent cache on torch_native "
                    "and triton only)")
        return ""

    @property
    def backends(self) -> set[str]:
        names = ("attention_backend", "decode_attention_backend", "prefill_attention_backend")
        return {arg(self.view, n) for n in names} - {None}

    @property
    def unsupported_backends(self) -> str:
        return ", ".join(sorted(self.backends - SUPPORTED_BACKENDS))


class AttnLayer(NamedTuple):
    """What SGLang built for one attention layer (a `RadixAttention`), read after the model loaded."""

    layer_id: int
    window: int  # sliding window in tokens; -1: none
    logit_cap: float  # 0: none
    sinks: bool  # the layer's attention module holds attention-sink logits
    scaled_kv: bool  # k or v scale other than 1 (a quantized KV cache's scales)
    xai_temperature: bool  # Grok's length-dependent query temperature


class Loaded(Fields):
    """What the loaded rows read, in each scheduler process after SGLang built the model, the KV pool and the
    allocator: the class names of the pool and allocator, the allocator's page size, the layer ids the pool holds
    KV for, and each attention layer found in the model's module tree (`AttnLayer`)."""

    def __init__(self, config: RaasConfig, pool: str, allocator: str, allocator_page_size: int,
                 pool_layers: tuple[int, ...], layers: tuple[AttnLayer, ...], backends: frozenset = frozenset()):
        self.config, self.pool, self.allocator = config, pool, allocator
        self.allocator_page_size, self.pool_layers, self.layers = allocator_page_size, pool_layers, layers
        self.backends = frozenset(backends)  # the resolved attention backends (decode and prefill); empty: unknown

    @property
    def swa_pool_backends(self) -> str:
        """The backends that would run a hybrid sliding-window pool's window layers unmapped, in words."""
        return ", ".join(sorted(self.backends - HYBRID_SWA_BACKENDS)) or "an unknown"

    @property
    def window_backends(self) -> str:
        """The backends that would run a windowed layer without RaaS applying its window, in words."""
        return ", ".join(sorted(self.backends - WINDOW_BACKENDS)) or "an unknown"

    @property
    def native_features(self) -> str:
        """What SGLang's torch_native attention would drop for this model, in words ('' when nothing)."""
        capped = [layer for layer in self.layers if layer.logit_cap > 0]
        caps = ", ".join(f"{c:g}" for c in sorted({layer.logit_cap for layer in capped}))
        names = [f"logit soft-capping ({len(capped)} of {len(self.layers)} layers, cap {caps})" if capped else "",
                 "attention sinks" if any(x.sinks for x in self.layers) else "",
                 "xai temperature" if any(x.xai_temperature for x in self.layers) else ""]
        return ", ".join(n for n in names if n)

    @property
    def unread_layers(self) -> str:
        """The pool's layers without exactly one attention layer found for them, in words ('' when none)."""
        found = [x.layer_id for x in self.layers]
        # NOTE: an MLA layer has two RadixAttentions of one layer id (the absorbed decode and the MHA prefill)
        allowed = (1, 2) if self.pool == "MLATokenToKVPool" else (1,)
        missing = [i for i in self.pool_layers if found.count(i) not in allowed]
        extra = sorted(set(found) - set(self.pool_layers))
        return ", ".join(str(i) for i in missing + extra)

    policy = property(lambda self: self.config.policy)
    page_size = property(lambda self: self.config.page_size)

    @property
    def windowed(self) -> str:
        """The layers with a sliding window, in words (`5 of 6 layers, window 512`)."""
        hit = [layer for layer in self.layers if layer.window > 0]
        sizes = ", ".join(str(w) for w in sorted({layer.window for layer in hit}))
        return f"{len(hit)} of {len(self.layers)} layers, window {sizes}" if hit else ""

    @property
    def kernel_features(self) -> str:
        """The model features the plugin's triton decode kernel does not apply, in words ('' when none)."""
        names = {"logit capping": lambda x: x.logit_cap > 0, "attention sinks": lambda x: x.sinks,
                 "scaled KV": lambda x: x.scaled_kv, "xai temperature": lambda x: x.xai_temperature,
                 "sliding windows": lambda x: x.window > 0}
        return ", ".join(name for name, has in names.items() if any(has(x) for x in self.layers))


class Request(Fields):
    """What the request rows read: the request's `custom_params` and `beam_width`, and the server's config."""

    def __init__(self, params: Any, server: RaasConfig, beam_width: int | None = None):
        self.raw = params  # NOTE: a row refuses anything but a mapping (or nothing) before the others read it
        self.params = params if isinstance(params, Mapping) else {}
        self.server, self.beam_width = server, beam_width or 1

    policy = property(lambda self: self.params.get("kv_policy", self.server.policy))
    budget = property(lambda self: self.params.get("raas_budget"))
    trace = property(lambda self: self.params.get("raas_trace", False))
    server_budget = property(lambda self: self.server.budget_tokens)
    tp = property(lambda self: self.server.tp_size)
    params_type = property(lambda self: type(self.raw).__name__)
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


def flag_set(attr: str) -> Callable[[Startup], bool]:
    """The server arg `attr` is on (a flag that must stay off under RaaS)."""
    return lambda s: bool(arg(s.view, attr))


def above_one(attr: str) -> Callable[[Startup], bool]:
    return lambda s: (arg(s.view, attr) or 1) > 1


def full_prefill_graphs(s: Startup) -> bool:
    """A fully captured prefill graph replays extend attention without the plugin's hooks (the hole-skipping re-prefill
    of a retracted request, the Quest key-bound folding). NOTE: `breakable` (SGLang's default on CUDA) runs
    attention eagerly between captured pieces, with the hooks."""
    return str(arg(s.view, "cuda_graph_config.prefill.backend")) == "full"


def pd_mode(s: Startup) -> str:
    """The PD disaggregation role: "null", "prefill" or "decode" (SGLang may hold a string or its enum)."""
    mode = str(arg(s.view, "disaggregation_mode")).lower()
    return next((m for m in ("prefill", "decode") if mode.endswith(m)), "null")


def decode_graphs(s: Startup) -> bool:
    backend = arg(s.view, "cuda_graph_config.decode.backend")
    return str(backend) not in ("disabled", "None") and str(arg(s.view, "device")) != "cpu"
