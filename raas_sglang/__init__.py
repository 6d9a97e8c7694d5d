"""raas_sglang: RaaS (Reasoning-Aware Attention Sparsity, arXiv 2502.11147) as an SGLang 0.5.23 plugin.

Importing this package is cheap (no torch, no SGLang). The plugin entry point is
`raas_sglang.patches:register`, discovered by SGLang through the `sglang.srt.plugins` entry-point group.
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# NOTE: `patches/` and `kernels/` sit at the repo root but belong to this package: pyproject's package-dir maps
# them to `raas_sglang.patches` / `raas_sglang.kernels`, so an installed copy (wheel) has them inside
# `raas_sglang/`. A source checkout does not, and when this package is imported from one (the repo root on
# sys.path, e.g. as the cwd of `python -c` / `python -m`, shadowing any installed copy) those two names would not
# resolve, or (editable install of another checkout) would resolve to that other checkout's files.
# So, only when imported from a checkout, a finder goes first on `sys.meta_path` that answers for exactly these two
# names, and only when the parent being searched is this checkout's package (importlib passes the parent's
# `__path__`): it returns `<root>/patches/__init__.py` (`kernels/`) with `<root>/patches` as the package's
# `__path__`, so their submodules then load through the ordinary path search inside that folder. Every other name
# is left to the other finders: `__path__` stays the one folder `raas_sglang/`, so the other folders at the repo
# root (`bench`, `tests`, ...) are not importable as `raas_sglang.*`, and the package and its `patches`/`kernels`
# always come from the same copy. tests/test_packaging.py covers checkout, editable and wheel installs.
_PKG_DIR = _os.path.dirname(_os.path.abspath(__file__))
_CHECKOUT_SUBPACKAGES = ("patches", "kernels")


class _CheckoutFinder:
    """Meta-path finder for `raas_sglang.patches` / `raas_sglang.kernels` of one source checkout."""

    def __init__(self, pkg_dir: str, dirs: dict) -> None:
        self.pkg_dir = pkg_dir  # this checkout's raas_sglang/ (the parent __path__ it answers for)
        self.dirs = dirs  # full module name -> folder at the repo root

    def find_spec(self, fullname, path=None, target=None):
        folder = self.dirs.get(fullname)
        if folder is None or not path or not any(_os.path.abspath(p) == self.pkg_dir for p in path):
            return None
        from importlib.util import spec_from_file_location

        return spec_from_file_location(
            fullname, _os.path.join(folder, "__init__.py"), submodule_search_locations=[folder]
        )

    def invalidate_caches(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<raas_sglang checkout finder for {self.pkg_dir}>"


def _install_checkout_finder() -> None:
    if _os.path.isdir(_os.path.join(_PKG_DIR, "patches")):  # an installed copy: nothing to map
        return
    root = _os.path.dirname(_PKG_DIR)
    dirs = {f"{__name__}.{sub}": _os.path.join(root, sub) for sub in _CHECKOUT_SUBPACKAGES}
    if not _os.path.isfile(_os.path.join(root, "pyproject.toml")) or not all(
        _os.path.isfile(_os.path.join(d, "__init__.py")) for d in dirs.values()
    ):
        return
    if any(getattr(f, "pkg_dir", None) == _PKG_DIR and type(f).__name__ == "_CheckoutFinder" for f in _sys.meta_path):
        return  # already there (this package re-imported or reloaded)
    _sys.meta_path.insert(0, _CheckoutFinder(_PKG_DIR, dirs))


_install_checkout_finder()
