"""Several ranks on SGLang's CPU engine (patches/cpu_parallel.py): the thread binding derived per launch, and no
PyNccl communicator without CUDA. The servers that use them: tests/test_tensor_parallel.py."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from raas_sglang import cpu_env
from raas_sglang.patches import cpu_parallel


@pytest.fixture(autouse=True)
def _fresh_process(monkeypatch):
    monkeypatch.setattr(cpu_parallel, "_SET_BY_PLUGIN", None)  # restored after each test


def test_threads_bind_splits_this_nodes_cores():
    assert cpu_env.threads_bind(2, [0, 1]) == "0|1"
    assert cpu_env.threads_bind(2, list(range(8))) == "0,1,2,3|4,5,6,7"
    assert cpu_env.threads_bind(3, [0, 1]) == "0|1|0"  # more ranks than cores: shared round-robin
    assert cpu_env.threads_bind(1, [0, 1]) is None  # one rank keeps every core (SGLang's default)
    assert cpu_env.threads_bind(1, [2, 3], all_cores=True) == "2,3"


def _args(**kw):
    base = dict(device="cpu", dp_size=1, tp_size=1, pp_size=1, nnodes=1, base_gpu_id=0, gpu_id_step=1)
    return SimpleNamespace(**{**base, **kw})


@pytest.mark.parametrize("kw, want", [
    ({}, None),  # tp 1: nothing set, the server keeps every core
    ({"tp_size": 2}, "{0}|{1}"),
    ({"tp_size": 2, "device": None}, "{0}|{1}"),  # device not given: CPU without CUDA
    ({"tp_size": 2, "nnodes": 2}, "{0},{1}"),  # one rank on this node, and SGLang still counts 2 > 1 NUMA node
    ({"dp_size": 2, "tp_size": 2, "nnodes": 2}, "{0}|{0}|{1}"),  # gpu_ids 0 and 2 here (replica bases 0, 2)
    ({"dp_size": 2}, "{0}|{1}"),
    ({"device": "cuda", "tp_size": 2}, None),
])
def test_bind_threads_per_launch(monkeypatch, kw, want):
    monkeypatch.setenv(cpu_env.BIND_ENV, "")  # unset for SGLang; undone after the test (delenv of an absent one is not)
    monkeypatch.setattr(cpu_env, "has_cuda", lambda: False)
    monkeypatch.setattr(cpu_env.os, "sched_getaffinity", lambda pid: {0, 1})
    assert cpu_parallel.bind_threads(_args(**kw)) == (None if want is None else want.format(0, 1))
    assert (os.environ.get(cpu_env.BIND_ENV) or None) == (None if want is None else want.format(0, 1))


def test_bind_threads_keeps_the_users_value(monkeypatch):
    monkeypatch.setenv(cpu_env.BIND_ENV, "0-1|0-1")
    monkeypatch.setattr(cpu_env, "has_cuda", lambda: False)
    assert cpu_parallel.bind_threads(_args(tp_size=2)) is None
    assert os.environ[cpu_env.BIND_ENV] == "0-1|0-1"


def test_no_pynccl_without_cuda(monkeypatch):
    monkeypatch.setattr(cpu_env, "has_cuda", lambda: False)
    seen = {}

    def orig(group_ranks, local_rank, backend, use_pynccl=None, **kw):
        seen.update(use_pynccl=use_pynccl)

    cpu_parallel.init_model_parallel_group(orig, [[0, 1]], 0, "gloo")
    assert seen["use_pynccl"] is False
    cpu_parallel.init_model_parallel_group(orig, [[0, 1]], 0, "gloo", use_pynccl=True)  # an explicit choice stands
    assert seen["use_pynccl"] is True
    monkeypatch.setattr(cpu_env, "has_cuda", lambda: True)
    cpu_parallel.init_model_parallel_group(orig, [[0, 1]], 0, "nccl")
    assert seen["use_pynccl"] is None  # CUDA: SGLang decides


def test_a_value_the_plugin_set_is_recomputed_for_the_next_launch(monkeypatch):
    """An in-process sgl.Engine launches in the same process: the binding the plugin set for a tp 2 engine must not
    be taken for the user's by the next launch."""
    monkeypatch.setenv(cpu_env.BIND_ENV, "")
    monkeypatch.setattr(cpu_env, "has_cuda", lambda: False)
    monkeypatch.setattr(cpu_env.os, "sched_getaffinity", lambda pid: {0, 1})
    assert cpu_parallel.bind_threads(_args(tp_size=2)) == "0|1"
    assert cpu_parallel.bind_threads(_args()) is None and not os.environ.get(cpu_env.BIND_ENV)  # tp 1: every core
    assert cpu_parallel.bind_threads(_args(dp_size=3)) == "0|1|0"
