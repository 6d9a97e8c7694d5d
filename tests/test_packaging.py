"""Packaging: `raas_sglang.patches` / `raas_sglang.kernels` (folders `patches/` and `kernels/` at the repo root)
resolve under an editable install, a regular (wheel) install and a bare checkout, from the repo root and from
elsewhere; the package and those two always come from the same copy; no other repo-root folder imports as
`raas_sglang.*`; the `sglang.srt.plugins` entry point `raas` loads `register`; a wheel holds every file of the
package folders and nothing else. The mechanism is the NOTE in raas_sglang/__init__.py.

Each case is a fresh interpreter running `python -c PROBE` (so, like `python -c` / `python -m`, the cwd is first on
sys.path). The wheel is built offline (`pip wheel --no-index --no-build-isolation`: setuptools from .venv) from a
temp copy of the sources, so no build/ or egg-info lands in the repo, and installed by pip into a bare venv
(`--without-pip`, no system site-packages) that cannot see the editable install, torch or SGLang.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from importlib.metadata import Distribution
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Source folder -> the package it is installed as (pyproject's package-dir).
FOLDERS = {"raas_sglang": "raas_sglang", "patches": "raas_sglang.patches", "kernels": "raas_sglang.kernels"}
ENTRY_POINT = "raas_sglang.patches:register"

# Imported by every case: light (stdlib only), so they also work in the bare venv.
LIGHT = ["raas_sglang", "raas_sglang.patches", "raas_sglang.kernels", "raas_sglang.dev"]
# Located without running them (find_spec imports only the parent); their modules import torch.
FIND = [
    "raas_sglang.config",
    "raas_sglang.policies",
    "raas_sglang.dev.launch",
    "raas_sglang.patches.runtime",
    "raas_sglang.kernels.sparse_decode",
    "raas_sglang.cpu_shim.sgl_kernel",
]
# Repo-root folders that are not part of the package.
NOT_PACKAGE = ["raas_sglang.bench", "raas_sglang.tests", "raas_sglang.docs", "raas_sglang.models"]

PROBE = f"""
import importlib, importlib.util, json, sys
from importlib.metadata import entry_points
out = {{}}
# The entry point first, as SGLang loads it: nothing of ours imported yet.
eps = [ep for ep in entry_points(group="sglang.srt.plugins") if ep.name == "raas"]
out["ep_values"] = [ep.value for ep in eps]
fn = eps[0].load() if eps else None
out["ep_target"] = fn and f"{{fn.__module__}}:{{fn.__qualname__}}"
def load(names):
    got = {{}}
    for name in names:
        try:
            got[name] = importlib.import_module(name).__file__
        except ImportError as e:
            got[name] = "ImportError: " + str(e)
    return got
out["import"] = load({LIGHT!r})
out["heavy"] = sorted(m for m in ("torch", "sglang", "triton", "numpy") if m in sys.modules)
out["ep_is_register"] = fn is not None and fn is sys.modules["raas_sglang.patches"].register
out["find"] = {{name: getattr(importlib.util.find_spec(name), "origin", None) for name in {FIND!r}}}
out["not_package"] = load({NOT_PACKAGE!r})
out["path"] = list(sys.modules["raas_sglang"].__path__)
out["heavy_import"] = load(sys.argv[1:])
print("PROBE" + json.dumps(out))
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))}
    env.update(PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1", PIP_CONFIG_FILE=os.devnull, **extra)
    return env


def _probe(python: str | Path, cwd: Path, *heavy: str, args: tuple = (), env: dict | None = None) -> dict:
    out = subprocess.run(
        [str(python), *args, "-c", PROBE, *heavy], cwd=cwd, env=env or _env(), capture_output=True, text=True,
        timeout=60,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("PROBE")]
    assert out.returncode == 0 and lines, f"probe failed in {cwd}:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return json.loads(lines[-1][len("PROBE"):])


def _expected(name: str, layout: dict[str, Path]) -> set[Path]:
    """The files module `name` may load from, given where each mapped package lives in that copy."""
    prefix = max((p for p in layout if name == p or name.startswith(p + ".")), key=len)
    rest = name[len(prefix):].lstrip(".").split(".") if name != prefix else []
    base = layout[prefix].joinpath(*rest)
    return {base / "__init__.py", base.with_suffix(".py")} if rest else {base / "__init__.py"}


def _check(result: dict, layout: dict[str, Path], *, entry_point: bool = True) -> None:
    """Every module from the one copy described by `layout`; the repo's other folders not importable."""
    where = {**result["import"], **result["find"], **result["heavy_import"]}
    for name, file in where.items():
        assert file and not file.startswith("ImportError"), f"{name}: {file}"
        assert Path(file) in _expected(name, layout), f"{name} loaded from {file}, expected {_expected(name, layout)}"
    for name, file in result["not_package"].items():
        assert file.startswith("ImportError"), f"{name} must not import (it is no part of the package): {file}"
    assert result["path"] == [str(layout["raas_sglang"])], result["path"]
    assert result["heavy"] == [], f"importing {LIGHT} pulled in {result['heavy']}"
    if entry_point:
        assert result["ep_values"] and set(result["ep_values"]) == {ENTRY_POINT}, result["ep_values"]
    if result["ep_values"]:
        assert result["ep_target"] == "raas_sglang.patches:register" and result["ep_is_register"], result


def _checkout(root: Path) -> dict[str, Path]:
    return {package: root / folder for folder, package in FOLDERS.items()}


def _source_files() -> list[str]:
    """The files of the package folders, relative to the repo: git's view when available (tracked or untracked
    but not ignored, still on disk), else the folders minus bytecode."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *FOLDERS],
            cwd=REPO, capture_output=True, text=True, check=True, timeout=30,
        ).stdout
        files = {f for f in out.split("\0") if f and (REPO / f).is_file()}
    except (OSError, subprocess.SubprocessError):
        files = {
            str(p.relative_to(REPO))
            for folder in FOLDERS
            for p in (REPO / folder).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
        }
    return sorted(files)


def _wheel_name(source: str) -> str:
    folder, _, rest = source.partition("/")
    return FOLDERS[folder].replace(".", "/") + "/" + rest


# --- the package list ---------------------------------------------------------------------------------------------


def test_every_package_folder_is_listed():
    """pyproject lists packages by hand (package-dir remaps patches/ and kernels/): none may be forgotten."""
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert tool["package-dir"] == {package: folder for folder, package in FOLDERS.items()}
    on_disk = {
        ".".join([FOLDERS[folder], *init.parent.relative_to(REPO / folder).parts])
        for folder in FOLDERS
        for init in (REPO / folder).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert set(tool["packages"]) == on_disk, (
        f"missing from pyproject: {sorted(on_disk - set(tool['packages']))}; "
        f"listed but absent: {sorted(set(tool['packages']) - on_disk)}"
    )


# --- editable install (.venv, `make setup`) -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def editable() -> str:
    # The venv's own record (from the repo root, `distribution()` would find the checkout's egg-info first).
    dists = list(Distribution.discover(name="raas_sglang", path=[sysconfig.get_path("purelib")]))
    url = json.loads(dists and dists[0].read_text("direct_url.json") or "{}")
    assert url.get("dir_info", {}).get("editable") and url.get("url") == REPO.as_uri(), (
        f"raas_sglang is not installed editable from {REPO} into {sys.prefix} ({url}); run `make setup`"
    )
    return sys.executable


@pytest.mark.parametrize("where", ["repo_root", "other_folder"])
def test_editable_install(editable, where, tmp_path):
    cwd = REPO if where == "repo_root" else tmp_path
    _check(_probe(editable, cwd, "raas_sglang.policies"), _checkout(REPO))


def test_editable_install_run_from_another_checkout(editable, built):
    """The editable install points at REPO, but a different checkout as cwd shadows it: the package is that
    checkout's, and so must be its patches/kernels (the editable finder alone would take REPO's)."""
    _check(_probe(editable, built["src"], "raas_sglang.policies"), _checkout(built["src"]))


# --- regular install (a wheel, in a bare venv) --------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("packaging")
    src, dist, env_dir = tmp / "src", tmp / "dist", tmp / "venv"
    files = _source_files()
    for rel in ["pyproject.toml", "README.md", *files]:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "--no-cache-dir"]
    run = {"env": _env(), "capture_output": True, "text": True, "timeout": 180}
    out = subprocess.run([*pip, "wheel", "--no-deps", "--no-index", "--no-build-isolation", "-w", dist, src], **run)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    (wheel,) = dist.glob("raas_sglang-*.whl")
    venv.create(env_dir, with_pip=False, symlinks=True)  # the base interpreter: no .venv site-packages
    python = env_dir / "bin" / "python"
    out = subprocess.run([*pip, "--python", python, "install", "--no-deps", "--no-index", wheel], **run)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], **run, check=True
    ).stdout.strip()
    return {"src": src, "wheel": wheel, "files": files, "python": python, "site": Path(site)}


def test_wheel_holds_the_package_folders(built):
    """Every file of raas_sglang/, patches/, kernels/ (data included), at its mapped place, and nothing else."""
    with zipfile.ZipFile(built["wheel"]) as whl:
        names = set(whl.namelist())
        meta = {n for n in names if n.split("/")[0].endswith(".dist-info")}
        (entry_points,) = [n for n in meta if n.endswith("/entry_points.txt")]
        entry_points_txt = whl.read(entry_points).decode()
    expected = {_wheel_name(f) for f in built["files"]}
    assert names - meta == expected, (
        f"missing from the wheel: {sorted(expected - names)}; unexpected: {sorted(names - meta - expected)}"
    )
    assert "[sglang.srt.plugins]" in entry_points_txt and f"raas = {ENTRY_POINT}" in entry_points_txt


def test_regular_install_from_another_folder(built, tmp_path):
    """Away from any checkout everything comes from the installed copy; the entry point is the wheel's."""
    result = _probe(built["python"], tmp_path)
    _check(result, {"raas_sglang": built["site"] / "raas_sglang"})
    assert built["site"] / "raas_sglang" / "patches" / "__init__.py" == Path(result["import"]["raas_sglang.patches"])


def test_regular_install_from_the_repo_root(built):
    """The checkout (cwd, first on sys.path) shadows the installed `raas_sglang`: then its patches/kernels are the
    checkout's too (never the installed ones beside the checkout's package), and the entry point still loads."""
    _check(_probe(built["python"], REPO), _checkout(REPO))


def test_uninstalled_checkout_on_pythonpath(built, tmp_path):
    """No install at all (`-S`: no site-packages), the checkout on PYTHONPATH: the checkout's modules only. The
    entry point exists only if metadata is on the path (an egg-info from an earlier editable install), so it is
    checked only when found."""
    result = _probe(built["python"], tmp_path, args=("-S",), env=_env(PYTHONPATH=str(REPO)))
    _check(result, _checkout(REPO), entry_point=False)
