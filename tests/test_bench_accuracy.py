"""`bench.accuracy` on a small fixture with the committed toy reasoner, through a real RaaS server: pass@1 per
budget, the answer extraction and the normalization."""

from __future__ import annotations

import json

import pytest

from bench import accuracy
from conftest import serve
from raas_sglang.dev import toy_task
from raas_sglang.dev.toy_reasoner import MODEL_DIR

pytestmark = pytest.mark.skipif(not (MODEL_DIR / "model.safetensors").exists(), reason="toy reasoner not built")


def test_answers_checked_with_math_verify():
    assert accuracy.correct(r"first 1/2, then \boxed{ \dfrac{3}{4} }.", r"\frac{3}{4}")
    assert accuracy.correct(r"the answer is \boxed{0.75}", "3/4")  # symbolic, not string, equality
    assert not accuracy.correct(r"the answer is \boxed{0.7}", "3/4")
    assert accuracy.correct(r"thus \boxed{(1, 2)}", r"$\left( 1, 2 \right)$")
    assert not accuracy.correct("no answer here at all", "12")
    assert accuracy.extractor("auto") is None
    get = accuracy.extractor(r"regex:=[A-Z](\d)")
    assert get("000a1 =F7") == "7" and accuracy.correct("000a1 =F7", "7", get) and not accuracy.correct("=F3", "7", get)
    letter = accuracy.extractor(r"regex:answer is \(?([A-D])")
    assert accuracy.correct("so the answer is (B).", "B", letter) and not accuracy.correct("answer is C", "B", letter)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = serve(MODEL_DIR, "--kv-policy", "raas", "--raas-budget", "320", tmp=tmp_path_factory.mktemp("acc"))
    yield srv
    srv.stop()


def test_fixture_run(server, tmp_path):
    probs = toy_task.problems(seed=3, n=6, steps=(30, 40))
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps({"problem": p.prompt, "answer": p.answer}) + "\n" for p in probs))
    out = tmp_path / "acc.json"
    accuracy.main([
        "--dataset", str(data), "--base-url", server.url, "--k", "2", "--budgets", "dense,32,320",
        "--api", "generate", "--extract", r"regex:=[A-Z](\d)", "--suffix", "", "--temperature", "0",
        "--max-tokens", "400", "--json", str(out), "--workers", "6",
    ])
    res = {r["budget"]: r for r in json.loads(out.read_text())["results"]}
    assert set(res) == {"dense", "32", "320"} and all(r["problems"] == 6 and r["k"] == 2 for r in res.values())
    # greedy: both samples agree, pass@1 is a multiple of 1/6; the committed model solves these
    assert res["dense"]["pass_at_1"] >= 5 / 6 and res["320"]["pass_at_1"] == res["dense"]["pass_at_1"]  # budget >= output: exact
    assert all(r["mean_output_tokens"] > 180 for r in res.values())
