"""RaaS server configuration: one frozen record, validated once at startup.

Imports no SGLang (the policy registry it reads is pure torch). `patches/server_args.py` turns the parsed flags into a `RaasConfig` with `resolve()`; any
`ConfigError` it raises carries one line that names the flag and what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, NamedTuple

from raas_sglang.policies import DENSE, REGISTRY
from raas_sglang.policies.raas import DEFAULT_REFRESH_RATIO, DEFAULT_REFRESH_THRESHOLD, DEFAULT_RESERVE  # noqa: F401

# "dense" (stock) and every registered policy (raas_sglang.policies; all but dense are budgeted)
POLICIES = (DENSE, *REGISTRY)
EVICTING = frozenset(n for n, c in REGISTRY.items() if c.evicts)  # decode KV bounded (physically evicted)
SELECTING = frozenset(n for n, c in REGISTRY.items() if c.selects)  # pick the pages attended per layer (Quest)
DEFAULT_POLICY = DENSE
DEFAULT_BUDGET_TOKENS = 2048
# RaaS's own parameters (refresh ratio, threshold, reserve): defaults and meaning in raas_sglang/policies/raas.py
RAAS_DEFAULT_PAGE_SIZE = 16  # the paper's page size; used when --page-size is not given
MIN_BUDGET_PAGES = 2  # with one page the only candidate victim is the page being written
# how pages are scored: "exact" = attention mass from the decode pass (torch_native computes it), "quest" =
# Quest key-bound estimates (any backend), "auto" = exact where the backend gives it, else quest
SCORES = ("auto", "exact", "quest")
DEFAULT_SCORE = "auto"
# how per-head and per-layer page scores combine into one score per page: "HEADS-LAYERS"
REDUCES = ("mean-mean", "max-mean", "mean-max", "max-max")
DEFAULT_REDUCE = "mean-mean"

# flag name -> the ServerArgs-style attribute that carries it
FLAGS = {
    "--kv-policy": "kv_policy",
    "--raas-budget": "raas_budget",
    "--raas-refresh-ratio": "raas_refresh_ratio",
    "--raas-score": "raas_score",
    "--raas-reduce": "raas_reduce",
    "--raas-reserve": "raas_reserve",
    "--raas-refresh-threshold": "raas_refresh_threshold",
}
RAAS_ONLY_FLAGS = ("--raas-budget", "--raas-refresh-ratio", "--raas-refresh-threshold", "--raas-score",
                   "--raas-reduce", "--raas-reserve")


class ConfigError(ValueError):
    """A bad RaaS setting. `str(err)` is one line: the flag, then what is allowed."""


@dataclass(frozen=True)
class RaasConfig:
    """The resolved RaaS settings that every SGLang process sees.

    NOTE: `budget_tokens` is always a whole number of pages (`budget_pages * page_size`), so
    `budget_pages >= MIN_BUDGET_PAGES` holds for every record that `resolve` returns.
    """

    policy: str = DEFAULT_POLICY
    budget_tokens: int = DEFAULT_BUDGET_TOKENS
    refresh_ratio: float = DEFAULT_REFRESH_RATIO
    page_size: int = 1
    score: str = DEFAULT_SCORE
    reduce: str = DEFAULT_REDUCE
    reserve: float = DEFAULT_RESERVE
    refresh_threshold: float = DEFAULT_REFRESH_THRESHOLD
    # set at startup when decode runs on the triton backend with --raas-score exact: attention and exact page
    # mass come from `raas_sglang.kernels.sparse_decode`, which selects no pages, so the selecting policies
    # (quest, raas+quest) are refused per request on such a server (and at startup by patches/startup_checks)
    exact_kernel: bool = False
    # set at startup from --tp-size: the ranks whose page scores are combined each step (patches/tensor_parallel);
    # the selecting policies pick pages per layer per rank and are refused per request when it is above 1
    tp_size: int = 1
    # set at startup: the resolved decode attention backend (Quest page selection runs on torch_native only, so a
    # selecting policy is refused per request elsewhere); "" = not resolved (refused as well)
    decode_backend: str = ""

    @property
    def enabled(self) -> bool:
        return self.policy != "dense"

    @property
    def keeps_bounds(self) -> bool:
        """Whether the server maintains Quest page key bounds (so the selecting policies can run on it)."""
        return self.policy in SELECTING or self.score == "quest"

    @property
    def budget_pages(self) -> int:
        return self.budget_tokens // self.page_size

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "budget_pages": self.budget_pages}


def _positive_int(flag: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().lstrip("+").isdigit():
            value = int(value)
        else:
            raise ConfigError(f"{flag}: must be a positive integer number of tokens, got {value!r}")
    if value <= 0:
        raise ConfigError(f"{flag}: must be a positive integer number of tokens, got {value!r}")
    return value


def _number(flag: str, value: Any, allowed: str, ok) -> float:
    """`value` as a float for which `ok(x)` holds (NaN never does), else one line naming `flag` and `allowed`."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if isinstance(value, bool) or math.isnan(x) or not ok(x):
        raise ConfigError(f"{flag}: must be {allowed}, got {value!r}")
    return x


def _ratio(flag: str, value: Any) -> float:
    return _number(flag, value, "a number in (0, 1]", lambda x: 0.0 < x <= 1.0)


def _fraction(flag: str, value: Any) -> float:
    return _number(flag, value, "a number in [0, 1)", lambda x: 0.0 <= x < 1.0)


def _multiple(flag: str, value: Any) -> float:
    return _number(flag, value, "a finite number >= 0", lambda x: 0.0 <= x < math.inf)


def budget_tokens_for(flag: str, value: Any, page_size: int) -> int:
    """Round a budget in tokens up to whole pages; refuse it below `MIN_BUDGET_PAGES` pages."""
    tokens = _positive_int(flag, value)
    pages = -(-tokens // page_size)
    if pages < MIN_BUDGET_PAGES:
        raise ConfigError(
            f"{flag}: must be at least {MIN_BUDGET_PAGES} pages = {MIN_BUDGET_PAGES * page_size} tokens "
            f"at page size {page_size}, got {value!r}"
        )
    return pages * page_size


def default_page_size(policy: str, page_size: int | None) -> int | None:
    """The page size to run with: RaaS defaults to 16 when `--page-size` was not given."""
    if page_size is None and policy != "dense":
        return RAAS_DEFAULT_PAGE_SIZE
    return page_size


def resolve(given: Mapping[str, Any], page_size: int) -> RaasConfig:
    """Validate the user's RaaS flags and fill defaults.

    `given` maps flag attribute names (`FLAGS` values) to the values the user set; a flag the user did not
    set is absent or None. `page_size` is the server's final page size.
    """
    policy = given.get("kv_policy") or DEFAULT_POLICY
    if policy not in POLICIES:
        raise ConfigError(f"--kv-policy: must be one of {', '.join(POLICIES)}, got {policy!r}")
    if policy == "dense":
        extra = [f for f in RAAS_ONLY_FLAGS if given.get(FLAGS[f]) is not None]
        if extra:
            raise ConfigError(
                f"{extra[0]}: only allowed with --kv-policy {', '.join(POLICIES[1:])} (the policy is dense); "
                f"add --kv-policy raas or drop {', '.join(extra)}"
            )
        return RaasConfig(policy=policy, page_size=page_size)
    budget = given.get("raas_budget")
    ratio = given.get("raas_refresh_ratio")
    score = given.get("raas_score") or DEFAULT_SCORE
    if score not in SCORES:
        raise ConfigError(f"--raas-score: must be one of {', '.join(SCORES)}, got {score!r}")
    reduce = given.get("raas_reduce") or DEFAULT_REDUCE
    if reduce not in REDUCES:
        raise ConfigError(f"--raas-reduce: must be one of {', '.join(REDUCES)}, got {reduce!r}")
    reserve = given.get("raas_reserve")
    threshold = given.get("raas_refresh_threshold")
    return RaasConfig(
        policy=policy,
        budget_tokens=budget_tokens_for(
            "--raas-budget", DEFAULT_BUDGET_TOKENS if budget is None else budget, page_size
        ),
        refresh_ratio=_ratio("--raas-refresh-ratio", DEFAULT_REFRESH_RATIO if ratio is None else ratio),
        page_size=page_size,
        score=score,
        reduce=reduce,
        reserve=_fraction("--raas-reserve", DEFAULT_RESERVE if reserve is None else reserve),
        refresh_threshold=_multiple(
            "--raas-refresh-threshold", DEFAULT_REFRESH_THRESHOLD if threshold is None else threshold
        ),
    )


class RequestOverrides(NamedTuple):
    """A request's RaaS settings after applying its `custom_params` to the server's config."""

    policy: str
    budget_pages: int
    trace: bool


REQUEST_KEYS = ("kv_policy", "raas_budget", "raas_trace")


def request_overrides(custom_params: Mapping[str, Any] | None, server: RaasConfig) -> RequestOverrides:
    """Validate a request's `custom_params` RaaS keys against the server config.

    Raises `ConfigError` naming the field (`custom_params.raas_budget: ...`): the message of the first request row
    of the refusal registry (`raas_sglang.refusals.REQUEST`) that refuses it. Keys other than `REQUEST_KEYS`
    belong to other features and are ignored.
    """
    from raas_sglang.refusals import refuse_request  # NOTE: not at the top: refusals imports this module

    params = custom_params or {}
    refuse_request(params, server)
    budget = params.get("raas_budget")
    pages = server.budget_pages if budget is None else -(-budget // server.page_size)
    return RequestOverrides(params.get("kv_policy", server.policy), pages, params.get("raas_trace", False))
