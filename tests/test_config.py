"""Unit tests of flag and request validation (`raas_sglang.config`, `raas_sglang.refusals`): no SGLang, no server."""

import re
from types import SimpleNamespace

import pytest

from bad_inputs import BASE_MODEL, BASE_VIEW, LAUNCH, REQUEST_CASES, RESOLVED, TEST_SERVER
from raas_sglang import refusals
from raas_sglang.config import FLAGS as FLAG_ATTRS
from raas_sglang.config import POLICIES, ConfigError, RaasConfig, default_page_size, request_overrides, resolve


def test_defaults_dense():
    assert resolve({}, 1) == RaasConfig(policy="dense", page_size=1)
    assert not resolve({"kv_policy": "dense"}, 16).enabled


def test_raas_defaults_and_rounding():
    c = resolve({"kv_policy": "raas"}, 16)
    assert (c.budget_tokens, c.budget_pages, c.refresh_ratio) == (2048, 128, 1.0)
    assert (c.refresh_threshold, c.reserve) == (0.25, 0.25)
    c = resolve({"kv_policy": "raas", "raas_budget": "33", "raas_refresh_ratio": "1"}, 16)
    assert (c.budget_tokens, c.budget_pages, c.refresh_ratio) == (48, 3, 1.0)
    assert resolve({"kv_policy": "raas", "raas_budget": 2}, 1).budget_tokens == 2
    assert resolve({"kv_policy": "raas", "raas_budget": 65}, 64).budget_pages == 2
    assert resolve({"kv_policy": "raas", "raas_reserve": "0.25"}, 16).reserve == 0.25
    assert resolve({"kv_policy": "raas", "raas_reserve": "0"}, 16).reserve == 0.0


def test_page_size_default_is_16_for_raas_only():
    assert default_page_size("raas", None) == 16
    assert default_page_size("raas", 64) == 64
    assert default_page_size("dense", None) is None


@pytest.mark.parametrize(
    "given, page, flag, allowed",
    [
        ({"kv_policy": "lru"}, 16, "--kv-policy", "dense, raas"),
        ({"kv_policy": "raas", "raas_budget": "abc"}, 16, "--raas-budget", "positive integer"),
        ({"kv_policy": "raas", "raas_budget": "0"}, 16, "--raas-budget", "positive integer"),
        ({"kv_policy": "raas", "raas_budget": "-32"}, 16, "--raas-budget", "positive integer"),
        ({"kv_policy": "raas", "raas_budget": "1.5"}, 16, "--raas-budget", "positive integer"),
        ({"kv_policy": "raas", "raas_budget": True}, 16, "--raas-budget", "positive integer"),
        ({"kv_policy": "raas", "raas_budget": "16"}, 16, "--raas-budget", "at least 2 pages = 32 tokens"),
        ({"kv_policy": "raas", "raas_budget": 1}, 1, "--raas-budget", "at least 2 pages = 2 tokens"),
        ({"kv_policy": "raas", "raas_refresh_ratio": "0"}, 16, "--raas-refresh-ratio", "(0, 1]"),
        ({"kv_policy": "raas", "raas_refresh_ratio": "1.01"}, 16, "--raas-refresh-ratio", "(0, 1]"),
        ({"kv_policy": "raas", "raas_refresh_ratio": "nan"}, 16, "--raas-refresh-ratio", "(0, 1]"),
        ({"kv_policy": "raas", "raas_refresh_ratio": "half"}, 16, "--raas-refresh-ratio", "(0, 1]"),
        ({"kv_policy": "dense", "raas_budget": "64"}, 1, "--raas-budget", "only allowed with --kv-policy raas"),
        ({"raas_refresh_ratio": "0.3"}, 1, "--raas-refresh-ratio", "only allowed with --kv-policy raas"),
        ({"kv_policy": "raas", "raas_reserve": "-0.1"}, 16, "--raas-reserve", "[0, 1)"),
        ({"kv_policy": "raas", "raas_refresh_threshold": "-1"}, 16, "--raas-refresh-threshold", ">= 0"),
        ({"kv_policy": "raas", "raas_refresh_threshold": "inf"}, 16, "--raas-refresh-threshold", ">= 0"),
        ({"kv_policy": "raas", "raas_reserve": "1"}, 16, "--raas-reserve", "[0, 1)"),
        ({"kv_policy": "raas", "raas_reserve": "some"}, 16, "--raas-reserve", "[0, 1)"),
    ],
)
def test_bad_values_name_flag_and_allowed(given, page, flag, allowed):
    with pytest.raises(ConfigError) as err:
        resolve(given, page)
    msg = str(err.value)
    assert msg.startswith(flag + ":") and allowed in msg and "\n" not in msg


def test_request_budget_past_64_bits_is_too_large_not_a_type_error():
    """JSON integers past 64 bits reach SGLang's custom_params as floats."""
    server = resolve({"kv_policy": "raas", "raas_budget": 256}, 16)
    with pytest.raises(ConfigError, match=r"custom_params.raas_budget: must be at most .*got 10000000000"):
        request_overrides({"raas_budget": 1e40}, server)
    with pytest.raises(ConfigError, match="must be a positive integer"):
        request_overrides({"raas_budget": 64.0}, server)


def test_exact_kernel_server_refuses_prompt_narrowing_requests():
    """On triton with --raas-score exact the kernel selects no pages: quest and raas+quest are refused per
    request (naming the server's limit, not the bounds), the evicting policies pass."""
    server = RaasConfig(policy="raas", page_size=16, score="exact", exact_kernel=True)
    for policy in ("raas", "streaming", "h2o", "dense"):
        assert request_overrides({"kv_policy": policy}, server).policy == policy
    for policy in ("quest", "raas+quest"):
        with pytest.raises(ConfigError, match=re.escape(f"custom_params.kv_policy: '{policy}' is not available on")):
            request_overrides({"kv_policy": policy}, server)


# -- the bad-input cases of the refusal registry (tests/bad_inputs.py) that need no server ------------------------


def _namespace(values: dict) -> SimpleNamespace:
    """Dotted names ("cuda_graph_config.decode.backend") become nested namespaces."""
    root = SimpleNamespace()
    for name, value in values.items():
        *path, last = name.split(".")
        node = root
        for part in path:
            if not hasattr(node, part):
                setattr(node, part, SimpleNamespace())
            node = getattr(node, part)
        setattr(node, last, value)
    return root


def _startup(case_flags: dict, view: dict, model: dict) -> refusals.Startup:
    config = resolve(case_flags, 16)
    return refusals.Startup(_namespace({**BASE_VIEW, **view}), config, _namespace({**BASE_MODEL, **model}))


@pytest.mark.parametrize("case", sorted(REQUEST_CASES))
def test_request_case(case):
    """Each request case is refused by the row it names, with its message; through `request_overrides` too (the
    scheduler side; `beam_width` is checked on the tokenizer side only)."""
    c = REQUEST_CASES[case]
    server = RaasConfig(**(c.server or TEST_SERVER))
    row, message = refusals.request_refusal(c.custom_params, server, c.beam_width)
    assert row.id == c.row and message.startswith(c.message) and "\n" not in message
    if c.beam_width is None:
        with pytest.raises(ConfigError) as err:
            request_overrides(c.custom_params, server)
        assert str(err.value) == message


@pytest.mark.parametrize("case", sorted(RESOLVED))
def test_resolved_case(case):
    c = RESOLVED[case]
    rows, message = refusals.startup_refusal(_startup(c.flags, c.view, c.model))
    assert c.row in [r.id for r in rows] and message.startswith(c.message) and "\n" not in message


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "dense"])
def test_plain_servers_start(policy):
    """The base view refuses nothing for any budgeted policy (a model config that cannot be built skips the model
    rows); dense is never checked."""
    assert refusals.startup_refusal(_startup({"kv_policy": policy}, {}, {})) is None
    assert refusals.startup_refusal(refusals.Startup(_namespace(BASE_VIEW), resolve({"kv_policy": policy}, 16))) is None
    dense = _startup({}, {"tp_size": 8, "enable_torch_compile": True}, {"attention_arch": "MLA"})
    assert refusals.startup_refusal(dense) is None


def _given(argv: list[str]) -> tuple[dict, int | None]:
    """The RaaS flags and --page-size of a launch case, as `from_cli_args` hands them to `resolve`."""
    given, page = {}, None
    for i, token in enumerate(argv):
        name, _, value = token.partition("=")
        if name in FLAG_ATTRS or name == "--page-size":
            value = value or argv[i + 1]
            if name == "--page-size":
                page = int(value)
            else:
                given[FLAG_ATTRS[name]] = value
    return given, page


@pytest.mark.parametrize("case", sorted(LAUNCH))
def test_launch_case_flags(case):
    """The launch cases of rows that `resolve` checks fail there with their message; the others pass it (they are
    refused once resolved)."""
    c = LAUNCH[case]
    given, page = _given(c.argv)
    page = default_page_size(given.get("kv_policy") or "dense", page) or 1
    if refusals.ROWS[c.row].refuses is None:
        with pytest.raises(ConfigError) as err:
            resolve(given, page)
        assert str(err.value).startswith(c.message)
    else:
        resolve(given, page)
