"""`python -m bench.premise --json P`: RaaS's premise, measured on a real model's attention.

SmolLM2-135M-Instruct in Hugging Face transformers (eager attention, float32) reads CHAMP problems followed by a
stored GPT-4 Turbo answer (the texts of `bench.realmodel`), in one forward; every decode query's attention
probabilities (30 layers x 9 heads) are summed per KV page. From them:

1. **Fading**: attention to a decode page by age (tokens since the page was complete), relative to a uniform share
   of the context (1.0 = as much as an average page), averaged over layers and heads; the same for prompt pages.
2. **Comebacks**: a page is *attended* at a step when its relative share is >= `--hot`; a comeback is a page
   attended again after >= `--silence` steps without being attended (and at least that old). Where they sit:
   prompt pages (which RaaS pins) or decode pages (which it may have evicted).
3. **What each rule keeps**: the policies of the core (`raas_sglang.core.RaasState` with the project's policy
   classes, exactly as the server runs them, scores = the page masses renormalized over what is kept, reduced
   mean over heads and layers as `--raas-reduce mean-mean`) replayed over the dense attention at several budgets;
   the metric is the share of each query's dense attention mass that falls on kept tokens (mean over layers,
   heads and decode queries). NOTE: a replay over dense attention ignores how eviction changes later hidden
   states; bench.realmodel measures that through the server (NLL).

Writes JSON and PNGs (fading curves; kept mass per variant and budget). Exits non-zero if a replay breaks the
bound (more than the budget's pages resident).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import NamedTuple

import torch

from bench.common import log, write_json
from bench.realmodel import Text, champ_texts
from raas_sglang.core import EMPTY, RaasState
from raas_sglang.dev import smollm2
from raas_sglang.policies import REGISTRY, PolicySet
from raas_sglang.policies.raas import Raas

PS = 16
# (name, refresh ratio, threshold, reserve): the paper's rule, the current defaults, and the steps between them
RAAS_VARIANTS = (
    ("raas paper (0.5, 0, 0)", 0.5, 0.0, 0.0),
    ("raas (1, 0.25, 0)", 1.0, 0.25, 0.0),
    ("raas (0.5, 0, 0.25)", 0.5, 0.0, 0.25),
    ("raas default (1, 0.25, 0.25)", 1.0, 0.25, 0.25),
    ("raas (1, 0.5, 0.25)", 1.0, 0.5, 0.25),
    ("raas (1, 1, 0.25)", 1.0, 1.0, 0.25),
    ("raas (1, 0.25, 0.5)", 1.0, 0.25, 0.5),
)
AGE_EDGES = (0, 16, 32, 64, 128, 256, 512, 1024, 1 << 30)


class Masses(NamedTuple):
    """Attention of the decode queries t = pin .. T-1 of one text, summed per key range.

    prompt_cum [layers, heads, Tq, P0 + 1] float32: cumulative mass over keys 0..P0-1 (P0 = the pinned region's
        end, ceil(pin / PS) * PS), so a key range [a, b) of it has mass cum[b] - cum[a]
    decode     [layers, heads, Tq, D] float32: mass on each decode page (pages P0/PS ..), 0 above the query
    """

    pin: int
    prompt_cum: torch.Tensor
    decode: torch.Tensor


def page_masses(model, text: Text) -> Masses:
    ids = text.prompt + text.force
    pin, T = len(text.prompt), len(ids)
    p0 = -(-pin // PS) * PS
    n_dec = -(-(T - p0) // PS)
    with torch.no_grad():
        atts = model(torch.tensor([ids]), output_attentions=True).attentions  # layers x [1, heads, T, T]
    cums, decs = [], []
    for a in atts:
        q = a[0, :, pin:, :].float()  # [heads, Tq, T]
        cum = torch.nn.functional.pad(q[:, :, :p0].cumsum(-1), (1, 0))  # [heads, Tq, P0 + 1]
        dec = torch.nn.functional.pad(q[:, :, p0:], (0, n_dec * PS - (T - p0)))
        cums.append(cum)
        decs.append(dec.reshape(q.shape[0], q.shape[1], n_dec, PS).sum(-1))  # [heads, Tq, D]
    return Masses(pin, torch.stack(cums), torch.stack(decs))


def fading(m: Masses) -> dict:
    """Mean relative share (mass / uniform share of the context) by age bucket, for decode and prompt pages."""
    Tq, D = m.decode.shape[2], m.decode.shape[3]
    p0 = m.prompt_cum.shape[3] - 1
    t = torch.arange(Tq) + m.pin  # [Tq] query positions
    uniform = PS / (t + 1).double()  # [Tq]
    rel_dec = m.decode.mean(dim=(0, 1)).double() / uniform[:, None]  # [Tq, D]
    page_end = p0 + (torch.arange(D) + 1) * PS  # [D] position after each decode page
    age_dec = t[:, None] - page_end[None, :]  # [Tq, D] (< 0: not complete yet)
    cum = m.prompt_cum.mean(dim=(0, 1)).double()  # [Tq, P0 + 1]
    rel_pr = (cum[:, PS::PS] - cum[:, :-1:PS]) / uniform[:, None]  # [Tq, P0/PS]
    age_pr = (t - m.pin)[:, None].expand_as(rel_pr)
    out = {}
    for name, rel, age in (("decode", rel_dec, age_dec), ("prompt", rel_pr, age_pr)):
        sums, counts = [], []
        for lo, hi in zip(AGE_EDGES, AGE_EDGES[1:]):
            sel = (age >= lo) & (age < hi)
            sums.append(float(rel[sel].sum()))
            counts.append(int(sel.sum()))
        out[name] = (sums, counts)
    return out


def comebacks(m: Masses, hot: float, silence: int) -> dict:
    """Comeback events (see the module docstring) by where the page sits."""
    Tq = m.decode.shape[2]
    t = torch.arange(Tq) + m.pin
    uniform = PS / (t + 1).double()
    cum = m.prompt_cum.mean(dim=(0, 1)).double()
    rel = torch.cat([(cum[:, PS::PS] - cum[:, :-1:PS]), m.decode.mean(dim=(0, 1)).double()], 1) / uniform[:, None]
    n_prompt = cum.shape[1] // PS
    p0 = n_prompt * PS
    written = torch.cat([torch.zeros(n_prompt), p0 + (torch.arange(rel.shape[1] - n_prompt) + 1) * PS])  # [pages]
    attended = rel >= hot  # [Tq, pages]
    last = torch.full((rel.shape[1],), float("nan"), dtype=torch.float64)  # last attended query position
    events = {"prompt": 0, "decode": 0}
    for i in range(Tq):
        pos = float(t[i])
        now = attended[i]
        since = torch.where(torch.isnan(last), pos - written, pos - last)
        back = now & (since >= silence) & (pos - written >= silence)
        if bool(back.any()):
            idx = back.nonzero().flatten()
            events["prompt"] += int((idx < n_prompt).sum())
            events["decode"] += int((idx >= n_prompt).sum())
        last = torch.where(now, torch.full_like(last, pos), last)
    events["prompt_pages"], events["decode_pages"] = n_prompt, rel.shape[1] - n_prompt
    return events


def policy_set(ratio: float, threshold: float, reserve: float) -> PolicySet:
    raas = Raas(refresh_ratio=ratio, refresh_threshold=threshold, reserve=reserve)
    return PolicySet([raas, *(cls() for name, cls in REGISTRY.items() if name not in ("raas", "raas+quest"))])


def replay(m: Masses, policies: PolicySet, policy: str, budget_pages: int) -> tuple[float, int]:
    """(mean kept share of the dense attention mass, max resident decode pages) for one text."""
    Tq, D = m.decode.shape[2], m.decode.shape[3]
    p0 = m.prompt_cum.shape[3] - 1
    first = p0 // PS
    state = RaasState(1, budget_pages, PS, policies=policies)
    state.admit(0, m.pin, budget_pages, policy)
    rows, pin_end = torch.tensor([0]), torch.tensor([m.pin])
    kept, most = 0.0, 0
    for i in range(Tq):
        pos = torch.tensor([m.pin + i])
        state.evict(state.victims(rows, pos))
        state.open_pages(rows, pos)
        most = max(most, int(state.count[0]))
        a, b = state.prompt_window(rows, pin_end, pos + 1)
        cum = m.prompt_cum[:, :, i]  # [layers, heads, P0 + 1]
        a, b = int(a[0]), int(b[0])
        prompt = cum[..., a] - cum[..., 0] + cum[..., p0] - cum[..., b]  # [layers, heads] (pinned tail kept)
        pages = state.pages[0]  # [L]
        valid = pages != EMPTY
        idx = torch.where(valid, pages - first, torch.zeros_like(pages)).clamp(max=D - 1)
        slot = torch.where(valid, m.decode[:, :, i, :].index_select(-1, idx), torch.zeros(()))  # [layers, heads, L]
        total = prompt + slot.sum(-1)  # [layers, heads]
        kept += float(total.mean())
        scores = (slot / total[..., None].clamp(min=1e-12)).mean(dim=(0, 1))  # [L] mean-mean reduce
        state.observe(rows, scores[None].float())
    return kept / Tq, most


def variants() -> list[tuple[str, PolicySet, str]]:
    out = [(name, policy_set(q, t, r), "raas") for name, q, t, r in RAAS_VARIANTS]
    base = policy_set(1.0, 0.25, 0.25)
    return out + [("h2o", base, "h2o"), ("streaming", base, "streaming")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--texts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--budgets", default="64,128,256")
    ap.add_argument("--hot", type=float, default=2.0, help="relative share at which a page counts as attended")
    ap.add_argument("--silence", type=int, default=256)
    args = ap.parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.monotonic()
    model_dir = smollm2.build()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    texts = champ_texts(tok, args.texts, args.tokens)
    budgets = [int(b) for b in args.budgets.split(",") if b]
    fade = {"decode": [[0.0] * (len(AGE_EDGES) - 1), [0] * (len(AGE_EDGES) - 1)],
            "prompt": [[0.0] * (len(AGE_EDGES) - 1), [0] * (len(AGE_EDGES) - 1)]}
    events = {"prompt": 0, "decode": 0, "prompt_pages": 0, "decode_pages": 0}
    kept: dict = {}
    failed = []
    for n, text in enumerate(texts, 1):
        m = page_masses(model, text)
        for name, (sums, counts) in fading(m).items():
            fade[name][0] = [x + y for x, y in zip(fade[name][0], sums)]
            fade[name][1] = [x + y for x, y in zip(fade[name][1], counts)]
        for k, v in comebacks(m, args.hot, args.silence).items():
            events[k] += v
        for name, policies, policy in variants():
            for b in budgets:
                share, most = replay(m, policies, policy, b // PS)
                kept.setdefault((name, b), []).append(share)
                if most > b // PS:
                    failed.append(f"{name} at {b}: {most} pages resident")
        log(f"text {n}/{len(texts)} ({text.key}): {time.monotonic() - t0:.0f} s")
    ages = [f"{lo}-{hi if hi < 1 << 30 else 'inf'}" for lo, hi in zip(AGE_EDGES, AGE_EDGES[1:])]
    fading_rows = {name: [{"age": a, "relative_share": round(s / c, 4) if c else None, "n": c}
                          for a, s, c in zip(ages, *fade[name])] for name in fade}
    kept_rows = [{"variant": name, "budget_tokens": b, "kept_mass": round(statistics.fmean(xs), 4),
                  "kept_mass_ci95": round(1.96 * statistics.stdev(xs) / len(xs) ** 0.5, 4) if len(xs) > 1 else None}
                 for (name, b), xs in kept.items()]
    total_events = events["prompt"] + events["decode"]
    result = {
        "model": "SmolLM2-135M-Instruct (float32, eager attention, Hugging Face)",
        "texts": [t.key for t in texts], "tokens": args.tokens, "page_size": PS,
        "hot": args.hot, "silence": args.silence,
        "fading": fading_rows,
        "comebacks": {**events, "prompt_share": round(events["prompt"] / total_events, 4) if total_events else None,
                      "per_prompt_page": round(events["prompt"] / max(1, events["prompt_pages"]), 3),
                      "per_decode_page": round(events["decode"] / max(1, events["decode_pages"]), 3)},
        "kept": kept_rows,
        "acceptance": {"passed": not failed, "failures": failed},
        "seconds": round(time.monotonic() - t0, 1),
    }
    path = Path(args.json)
    write_json(path, result)
    plots(path, fading_rows, kept_rows, budgets)
    log(f"comebacks: {result['comebacks']}")
    for r in kept_rows:
        log(f"{r['variant']:32s} budget {r['budget_tokens']:5d}: kept mass {r['kept_mass']:.4f} +- {r['kept_mass_ci95']}")
    return 1 if failed else 0


def plots(path: Path, fading_rows: dict, kept_rows: list[dict], budgets: list[int]) -> None:
    from bench.common import plot

    series = {}
    for name, rows in fading_rows.items():
        pts = [(i, r["relative_share"]) for i, r in enumerate(rows) if r["relative_share"] is not None]
        series[f"{name} pages"] = ([AGE_EDGES[i] + 1 for i, _ in pts], [y for _, y in pts])
    plot(path.with_name(f"{path.stem}_fading.png"), "attention to a page by its age (1 = uniform share)",
         "age (tokens since the page was complete; bucket start, +1)", "relative attention share", series)
    names = list(dict.fromkeys(r["variant"] for r in kept_rows))
    series = {n: (budgets, [next(r["kept_mass"] for r in kept_rows if r["variant"] == n and r["budget_tokens"] == b)
                            for b in budgets]) for n in names}
    plot(path.with_name(f"{path.stem}_kept.png"), "dense attention mass kept, by policy rule",
         "budget (tokens)", "kept share of attention mass", series)


if __name__ == "__main__":
    raise SystemExit(main())
