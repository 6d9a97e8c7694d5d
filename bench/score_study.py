"""`python -m bench.score_study --json s.json [--study score|refresh]`: which RaaS settings keep accuracy at small
budgets.

`--study score` (default): exact attention mass vs Quest estimates (`--raas-score`), and the reduction over heads
and layers (`--raas-reduce`: mean or max each). `--study refresh`: the stamp refresh rule (`--raas-refresh-ratio`,
`--raas-refresh-threshold`) and the heavy-hitter reserve (`--raas-reserve`), from the paper's rule (top 50%, no
threshold, no reserve) to the server's defaults. For each variant one server runs the `raas` policy on the toy
reasoner's held-out problems (`bench.fidelity`, same seed) at small budgets; flags a variant does not name keep
the server's defaults. Writes JSON and a markdown table (`.md`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench import fidelity
from bench.common import log, write_json

STUDIES = {
    "score": [{"--raas-score": s, "--raas-reduce": r} for s, r in (
        ("exact", "mean-mean"), ("exact", "max-mean"), ("exact", "mean-max"), ("exact", "max-max"),
        ("quest", "mean-mean"), ("quest", "max-max"))],
    "refresh": [{"--raas-refresh-ratio": q, "--raas-refresh-threshold": t, "--raas-reserve": r} for q, t, r in (
        ("0.5", "0", "0"),  # the paper's rule
        ("1", "0.25", "0"), ("0.5", "0", "0.25"), ("0.5", "0.5", "0.25"),
        ("1", "0", "0.25"), ("1", "0.25", "0.25"), ("1", "0.5", "0.25"), ("1", "1", "0.25"),
        ("1", "0.25", "0.375"), ("1", "0.25", "0.5"))],
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--fractions", default="0.05,0.125,0.25")
    ap.add_argument("--problems", type=int, default=102)
    ap.add_argument("--study", choices=sorted(STUDIES), default="score")
    args = ap.parse_args(argv)
    variants = STUDIES[args.study]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, flags in enumerate(variants):
            server_args = " ".join(f"{k} {v}" for k, v in flags.items())
            log(f"variant {i + 1}/{len(variants)}: {server_args}")
            out = Path(tmp) / f"{i}.json"
            fidelity.main([
                "--json", str(out), "--policies", "raas", "--no-dense", "--fractions", args.fractions,
                "--problems", str(args.problems), "--server-args", server_args,
            ])
            for r in json.loads(out.read_text())["results"]:
                rows.append({"variant": i, **flags, **r})
    write_json(args.json, {"study": args.study, "variants": variants, "results": rows})
    budgets = sorted({r["budget_tokens"] for r in rows})
    names = list(variants[0])
    lines = ["| " + " | ".join(names) + " | " + " | ".join(f"budget {b}" for b in budgets) + " |",
             "|" + "---|" * (len(names) + len(budgets))]
    for i, flags in enumerate(variants):
        cells = []
        for b in budgets:
            by = {r["task"]: r["accuracy"] for r in rows if (r["variant"], r["budget_tokens"]) == (i, b)}
            cells.append(f"{by['all']:.2f} ({by['recent']:.2f} / {by['prompt']:.2f} / {by['early']:.2f})")
        lines.append("| " + " | ".join(flags.values()) + " | " + " | ".join(cells) + " |")
    md = Path(args.json).with_suffix(".md")
    md.write_text("Accuracy pooled (recent / prompt / early), raas policy, toy reasoner:\n\n" + "\n".join(lines) + "\n")
    print(md.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
