"""`python -m bench.score_study --json s.json`: which page score keeps RaaS accurate at small budgets.

For each scoring variant — exact attention mass vs Quest estimates (`--raas-score`), and the reduction over
heads and layers (`--raas-reduce`: mean or max each) — one server runs the `raas` policy on the toy reasoner's
held-out problems (`bench.fidelity`, same seed) at small budgets. Writes JSON and a markdown table (`.md`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench import fidelity
from bench.common import log, write_json

VARIANTS = (
    ("exact", "mean-mean"), ("exact", "max-mean"), ("exact", "mean-max"), ("exact", "max-max"),
    ("quest", "mean-mean"), ("quest", "max-max"),
)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--fractions", default="0.05,0.125,0.25")
    ap.add_argument("--problems", type=int, default=102)
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for score, reduce in VARIANTS:
            log(f"variant --raas-score {score} --raas-reduce {reduce}")
            out = Path(tmp) / f"{score}-{reduce}.json"
            fidelity.main([
                "--json", str(out), "--policies", "raas", "--no-dense", "--fractions", args.fractions,
                "--problems", str(args.problems), "--server-args", f"--raas-score {score} --raas-reduce {reduce}",
            ])
            for r in json.loads(out.read_text())["results"]:
                rows.append({"score": score, "reduce": reduce, **r})
    write_json(args.json, {"variants": [list(v) for v in VARIANTS], "results": rows})
    budgets = sorted({r["budget_tokens"] for r in rows})
    lines = ["| score | reduce (heads-layers) | " + " | ".join(f"budget {b}" for b in budgets) + " |",
             "|---|---|" + "---|" * len(budgets)]
    for score, reduce in VARIANTS:
        cells = []
        for b in budgets:
            by = {r["task"]: r["accuracy"] for r in rows if (r["score"], r["reduce"], r["budget_tokens"]) == (score, reduce, b)}
            cells.append(f"{by['all']:.2f} ({by['recent']:.2f} / {by['prompt']:.2f} / {by['early']:.2f})")
        lines.append(f"| {score} | {reduce} | " + " | ".join(cells) + " |")
    md = Path(args.json).with_suffix(".md")
    md.write_text("Accuracy pooled (recent / prompt / early), raas policy, toy reasoner:\n\n" + "\n".join(lines) + "\n")
    print(md.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
