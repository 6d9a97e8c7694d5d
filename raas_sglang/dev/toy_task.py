"""The toy reasoner's task family: long, checkable chains of thought whose final answer needs one of three kinds
of information (pure Python, no torch, no SGLang).

A problem is a prompt of ten variables, a fact Q, a step count N and a question; the reasoning trace walks a
countdown from N to 0, one line of 6 characters per step, each line looking up one variable in the prompt:

    prompt:  a3b7c1d9e0f2g5h8i4j6Q5N097?F>
    trace:   097h8 096g5 095f2 094e0 F0 093d9 ... 006g5 005f2 R2 004e0 ... 000a3 =F0

- line `{c:03d}{L}{v} `: counter c, the letter L = letters[c % 10], v = the prompt's value of L;
- milestone `F{x} ` after the 4th line (an early intermediate result) and `R{x} ` after the line with counter 005
  (a recent one): x = the value the line just before looked up (a first trial summed the two previous values
  mod 10; the 4-layer model did not learn that sum in 38 minutes, see models/toy-reasoner/README.md);
- after line 000: `=`, the letter the question names, and its value: the answer.

The three kinds, in equal thirds: `recent` asks for R (written ~30 tokens before the answer: a recent milestone),
`prompt` asks for Q (a prompt fact never used by the trace: recall after a long silence), `early` asks for F
(an intermediate result written near the start of the trace and reused only at the end: RaaS's weak case).
"""

from __future__ import annotations

import random
from typing import NamedTuple

LETTERS = "abcdefghij"
KINDS = {"recent": "R", "prompt": "Q", "early": "F"}
CHARS = LETTERS + "0123456789FRQN?>= "
SPECIAL = ("<pad>", "<s>", "</s>")
EVAL_STEPS = (90, 120)  # N range of the held-out problems: traces of 557..737 tokens


class Problem(NamedTuple):
    kind: str  # "recent" | "prompt" | "early"
    prompt: str
    trace: str  # the full reasoning trace, ending with the answer `=X d`
    answer: str  # one digit


def make(rng: random.Random, kind: str, steps: int) -> Problem:
    """One problem with a countdown from `steps` (>= 10) to 0."""
    if steps < 10:
        raise ValueError("steps must be >= 10 (both milestones need room)")
    values = {c: rng.randrange(10) for c in LETTERS}
    q = rng.randrange(10)
    marker = KINDS[kind]
    prompt = "".join(f"{c}{values[c]}" for c in LETTERS) + f"Q{q}N{steps:03d}?{marker}>"
    parts, seen, milestones = [], [], {"Q": q}
    for c in range(steps, -1, -1):
        letter = LETTERS[c % 10]
        parts.append(f"{c:03d}{letter}{values[letter]} ")
        seen.append(values[letter])
        if len(seen) == 4:
            milestones["F"] = seen[-1]
            parts.append(f"F{milestones['F']} ")
        if c == 5:
            milestones["R"] = seen[-1]
            parts.append(f"R{milestones['R']} ")
    answer = str(milestones[marker])
    parts.append(f"={marker}{answer}")
    return Problem(kind, prompt, "".join(parts), answer)


def problems(seed: int, n: int, steps: tuple[int, int] = EVAL_STEPS) -> list[Problem]:
    """`n` problems in equal thirds over the kinds (cycling recent, prompt, early), fixed by `seed`."""
    rng = random.Random(seed)
    kinds = list(KINDS)
    return [make(rng, kinds[i % 3], rng.randint(*steps)) for i in range(n)]


def extract(text: str) -> str | None:
    """The answer digit of a generated trace (the digit after the last `=X`), or None."""
    at = text.rfind("=")
    if at < 0 or len(text) < at + 3 or text[at + 2] not in "0123456789":
        return None
    return text[at + 2]
