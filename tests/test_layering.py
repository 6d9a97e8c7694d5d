"""The import direction holds: patches -> core -> kernels, never back. The core (`raas_sglang/`, outside `dev/`
and the CPU shim) imports neither SGLang nor `raas_sglang.patches` nor the dev tooling; kernels import neither
SGLang nor the core nor the patches. Read from the source (every `import` statement, also inside functions), and
checked at run time for the core: importing it loads no SGLang module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORE = sorted(p for p in (REPO / "raas_sglang").rglob("*.py") if "dev" not in p.parts and "cpu_shim" not in p.parts)
KERNELS = sorted((REPO / "kernels").glob("*.py"))


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def _bad(names: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden))


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(REPO)))
def test_core_imports_no_sglang_patches_or_dev(path):
    assert not _bad(_imports(path), ("sglang", "raas_sglang.patches", "raas_sglang.dev", "bench", "tests"))


@pytest.mark.parametrize("path", KERNELS, ids=lambda p: str(p.relative_to(REPO)))
def test_kernels_import_no_sglang_core_or_patches(path):
    allowed = {"raas_sglang.kernels"}
    names = {n for n in _imports(path) if not any(n == a or n.startswith(a + ".") for a in allowed)}
    assert not _bad(names, ("sglang", "raas_sglang"))


def test_importing_the_core_loads_no_sglang():
    modules = [".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__") for p in CORE]
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint(sorted(m for m in sys.modules if m.split('.')[0] == 'sglang'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
