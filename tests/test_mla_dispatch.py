"""`patches/mla_torch_native.py`: which DeepSeek attention method runs, by backend and server policy. Under a
budgeted policy on torch_native every forward of an MLA layer takes the absorbed path (`MLA`); triton keeps
upstream's choice (its MHA prefill), and a dense server is left as stock. End to end (the hook in place on the
real `DeepseekV2AttentionMLA`, the absorbed prefill equal to Hugging Face's model): tests/test_mla.py."""

from __future__ import annotations

import pkgutil
from types import SimpleNamespace

import pytest

from raas_sglang.config import RaasConfig
from raas_sglang.patches import mla_torch_native, runtime


@pytest.mark.parametrize("backend,budgeted,absorbed", [
    ("torch_native", True, True), ("torch_native", False, False), ("triton", True, False), ("triton", False, False),
])
def test_dispatch_by_backend_and_policy(monkeypatch, backend, budgeted, absorbed):
    from sglang.srt.model_executor.forward_batch_info import ForwardMode
    from sglang.srt.models.deepseek_common.attention_forward_methods.forward_methods import AttnForwardMethod

    rt = runtime.Runtime(RaasConfig(policy="raas", budget_tokens=256, page_size=16)) if budgeted else None
    monkeypatch.setattr(runtime, "_RUNTIME", rt)
    monkeypatch.setattr(runtime, "_LOADED", True)
    attn = SimpleNamespace(current_attention_backend=backend)  # what upstream's dispatch stamps on the layer
    batch = SimpleNamespace(forward_mode=ForwardMode.EXTEND)
    got = mla_torch_native.dispatch_attn_forward_method(lambda self, fb: AttnForwardMethod.MHA, attn, batch)
    assert got is (AttnForwardMethod.MLA if absorbed else AttnForwardMethod.MHA)


def test_hook_target_exists_in_this_sglang():
    """The hooked method is where the hook says (an SGLang that renamed it stops at import: patches/hooks.py)."""
    (target, _, kind), = mla_torch_native.HOOKS
    owner, attr = target.rsplit(".", 1)
    assert kind == "AROUND" and callable(getattr(pkgutil.resolve_name(owner), attr))
