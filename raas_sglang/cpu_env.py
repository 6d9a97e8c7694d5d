"""The environment SGLang 0.5.23 needs on a machine without a CUDA device.

SGLang decides CPU vs GPU when `sglang.srt.server_args` is first imported (`is_cpu()` is cached), i.e. before any
plugin loads, so the switch must be in the environment before Python starts:

- `SGLANG_USE_CPU_ENGINE=1` makes SGLang take its CPU code paths;
- the folder of our pure-torch `sgl_kernel` stand-in goes first on `PYTHONPATH` (the CPU build of sgl-kernel
  is not published; the CUDA build that pip installs cannot import without `libcuda.so.1`).

The project's launchers (Makefile, demo, tests, benchmarks) call `launch_env()`; on a CUDA machine it returns
the environment unchanged, so the real `sgl_kernel` is never shadowed there.

    python -m raas_sglang.cpu_env     # prints the two `export` lines for a shell

Several ranks on one CPU machine (`--tp-size`, `--dp-size`, `--pp-size`, `--nnodes`): SGLang's CPU engine binds each
rank's OpenMP threads from `SGLANG_CPU_OMP_THREADS_BIND` ("cores of rank 0|cores of rank 1|..."); unset, it asserts
that dp*tp*pp <= the NUMA nodes (one on most machines). `threads_bind` derives a value for one launch: this node's
ranks split the cores this process may run on. The plugin sets it in the launcher when it is unset and more than
one rank runs here (`patches/cpu_parallel.py`); a single-rank server keeps every core.
"""

from __future__ import annotations

import functools
import os
import shlex
from pathlib import Path

SHIM_DIR = str(Path(__file__).resolve().parent / "cpu_shim")


@functools.lru_cache(maxsize=1)
def has_cuda() -> bool:
    """True when torch sees a CUDA device (imports torch once; cached)."""
    import torch

    return torch.cuda.is_available()


def cpu_exports(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The variables to add for the CPU engine (empty on a CUDA machine)."""
    env = os.environ if environ is None else environ
    if has_cuda():
        return {}
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != SHIM_DIR]
    return {"SGLANG_USE_CPU_ENGINE": "1", "PYTHONPATH": os.pathsep.join([SHIM_DIR, *parts])}


def launch_env(environ: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """A copy of `environ` (default: this process's) ready to start SGLang on this machine, plus `extra`.

    NOTE: `TRITON_INTERPRET` is dropped unless `extra` sets it: the test process turns the Triton interpreter on
    for the kernel tests, and a server should only run Triton code interpreted when a test asks for it.
    """
    env = dict(os.environ if environ is None else environ)
    env.pop("TRITON_INTERPRET", None)
    env.update(cpu_exports(env))
    env.update(extra)
    return env


BIND_ENV = "SGLANG_CPU_OMP_THREADS_BIND"


def threads_bind(ranks: int, cores: list[int] | None = None, all_cores: bool = False) -> str | None:
    """The `SGLANG_CPU_OMP_THREADS_BIND` value that gives each of this node's `ranks` its share of `cores`
    (default: the cores this process may run on), contiguous and in order: 2 ranks on cores [0, 1] -> "0|1",
    2 ranks on 8 cores -> "0,1,2,3|4,5,6,7"; more ranks than cores share them round-robin. None for one rank,
    unless `all_cores` (then that rank gets every core: "0,1")."""
    if ranks <= 1 and not all_cores:
        return None
    ranks = max(ranks, 1)
    cores = sorted(os.sched_getaffinity(0)) if cores is None else sorted(cores)
    if ranks > len(cores):
        groups = [[cores[i % len(cores)]] for i in range(ranks)]
    else:
        groups = [cores[i * len(cores) // ranks:(i + 1) * len(cores) // ranks] for i in range(ranks)]
    return "|".join(",".join(map(str, g)) for g in groups)


def threads_bind_ids(ids: list[int], cores: list[int] | None = None) -> str:
    """The `SGLANG_CPU_OMP_THREADS_BIND` value for ranks whose gpu_ids are `ids` (SGLang indexes the entries by
    gpu_id): the used entries split `cores` as `threads_bind` does, an index no rank uses gets the first core. One
    rank gets every core."""
    cores = sorted(os.sched_getaffinity(0)) if cores is None else sorted(cores)
    shares = (threads_bind(len(ids), cores) or ",".join(map(str, cores))).split("|")
    by_id = dict(zip(sorted(ids), shares))
    return "|".join(by_id.get(i, str(cores[0])) for i in range(max(ids) + 1))


def main() -> None:
    for key, value in cpu_exports().items():
        print(f"export {key}={shlex.quote(value)}")


if __name__ == "__main__":
    main()
