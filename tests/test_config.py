"""Unit tests of flag validation (`raas_sglang.config`): no SGLang, no server."""

import re

import pytest

from raas_sglang.config import ConfigError, RaasConfig, default_page_size, request_overrides, resolve


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
