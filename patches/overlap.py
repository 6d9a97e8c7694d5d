"""Seam: the overlap scheduler is turned off under a budgeted `--kv-policy`.

Upstream symbol hooked (sglang 0.5.23, `sglang/srt/server_args.py`):

- `ServerArgs.resolve_once`, BEFORE: runs on the CLI and `sgl.Engine` paths before SGLang resolves the record
  (children get resolved records, so it does nothing there); sets `disable_overlap_schedule` with a warning.

NOTE: RaaS state is updated between the scheduler's memory check and the step's allocation; the overlap
scheduler runs those out of order, so RaaS turns it off (with a warning) rather than refusing.
"""

from __future__ import annotations

import logging

from raas_sglang.patches.server_args import config_of

logger = logging.getLogger("raas_sglang")


def resolve_once(self, *args, **kwargs):
    """BEFORE hook on `ServerArgs.resolve_once`."""
    if getattr(self, "_resolution_finished", False) or getattr(self, "_resolution_failed", False):
        return None
    if config_of(self).enabled and not self.disable_overlap_schedule:
        logger.warning("raas_sglang: --kv-policy raas turns the overlap scheduler off (--disable-overlap-schedule)")
        self.disable_overlap_schedule = True
    return None


HOOKS = (("sglang.srt.server_args.ServerArgs.resolve_once", resolve_once, "BEFORE"),)
