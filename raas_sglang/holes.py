"""Holes: the evicted decode pages of a row, and the token runs a retracted request recomputes to resume with the
pages it kept (pure Python; `raas_sglang.core` keeps the state they are read from)."""

from __future__ import annotations

from typing import Any


def hole_pages(resident: list[int], first_decode_page: int, upto_page: int | None = None) -> list[int]:
    """Evicted decode pages, ascending: pages are opened in order and the newest is never evicted, so the holes are
    the non-resident pages from the first decode page up to the newest resident one (and below `upto_page`)."""
    newest = max(resident) if resident else first_decode_page - 1
    last = newest + 1 if upto_page is None else min(upto_page, newest + 1)
    kept = set(resident)
    return [p for p in range(first_decode_page, last) if p not in kept]


def reprefill_runs(pin_len: int, page_size: int, holes: list[int], n_tokens: int) -> list[tuple[int, int]]:
    """The token ranges a retracted request recomputes to resume with its kept pages: [0, n_tokens) minus its
    hole pages, ascending, as maximal runs; the last run is split where position `n_tokens - 1` opens a decode page
    (that page opens, and may evict, as it would in a decode step). `holes` = logical page indices, ascending.

    >>> reprefill_runs(40, 16, [4, 5, 7], 150)
    [(0, 64), (96, 112), (128, 150)]
    """
    runs, start = [], 0
    for p in holes:
        lo, hi = p * page_size, (p + 1) * page_size
        if lo > start:
            runs.append((start, lo))
        start = max(start, hi)
    if start < n_tokens:
        runs.append((start, n_tokens))
    last = n_tokens - 1
    first_decode = -(-pin_len // page_size) * page_size
    if runs and last % page_size == 0 and last >= first_decode and runs[-1][0] < last:
        lo, hi = runs.pop()
        runs += [(lo, last), (last, hi)]
    return runs


def snapshot_holes(snap: Any, page_size: int) -> list[int]:
    """The hole pages of a `core.RowSnapshot` (`hole_pages` over its resident pages)."""
    return hole_pages(snap.pages[snap.pages >= 0].tolist(), -(-snap.pin_len // page_size))
