"""raas_sglang: RaaS (Reasoning-Aware Attention Sparsity, arXiv 2502.11147) as an SGLang 0.5.23 plugin.

Importing this package is cheap (no torch, no SGLang). The plugin entry point is
`raas_sglang.patches:register`, discovered by SGLang through the `sglang.srt.plugins` entry-point group.
"""

import os as _os

__version__ = "0.1.0"

# NOTE: `patches/` and `kernels/` sit at the repo root but belong to this package (pyproject maps them to
# `raas_sglang.patches` / `raas_sglang.kernels`). When this package is imported from a source checkout (the repo
# root on sys.path shadows the installed copy, editable or not), let the submodule search also look in the
# repo root, so `raas_sglang.patches` resolves to `<root>/patches` instead of silently failing to import.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(__path__[0], "patches")) and _os.path.isfile(
    _os.path.join(_root, "patches", "__init__.py")
):
    __path__.append(_root)
