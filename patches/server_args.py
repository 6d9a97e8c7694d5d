"""Seam: the RaaS flags on SGLang's server arguments, and the RaaS config each record carries.

Upstream symbols hooked (sglang 0.5.23, `sglang/srt/server_args.py`, `sglang/srt/entrypoints/engine.py`):

- `ServerArgs.add_cli_args` (staticmethod), AFTER: adds `--kv-policy`, `--raas-budget`, `--raas-refresh-ratio`,
  `--raas-refresh-threshold`, `--raas-score`, `--raas-reduce`, `--raas-reserve` to the stock parser, so
  `python -m sglang.launch_server --help` lists them.
- `ServerArgs.from_cli_args` (classmethod), AROUND: `from_cli_args` copies only declared fields, so our values
  would be dropped; the hook validates them, defaults the page size to 16 under RaaS, and stores the resolved
  `RaasConfig` on the record as `_raas_config` (`ATTR`; read it with `config_of`). Attributes named `_...` may be
  set at any time and are pickled into every SGLang child process (`ServerArgs.__reduce__` carries `__dict__`).
- `Engine.server_args_class` (a documented class attribute, set directly; hooking it would rebind `ServerArgs`
  across SGLang): a factory that accepts `kv_policy=`, `raas_budget=`, `raas_refresh_ratio=`, ...

Bad values stop the launcher with one line (`SystemExit`) naming the flag and what is allowed; `sgl.Engine`
raises `raas_sglang.config.ConfigError` (a `ValueError`) instead. These are the `flag.*` rows of the refusal
registry (`raas_sglang/refusals.py`), raised by `raas_sglang.config.resolve`. The rest of the record's lifecycle
is in `overlap` (the overlap scheduler off) and `startup_checks` (the startup refusals, once resolved).
"""

from __future__ import annotations

import argparse
from typing import Any

from raas_sglang import config as cfg
from raas_sglang.config import ConfigError, RaasConfig
from raas_sglang.patches import cpu_parallel
from raas_sglang.patches.lazy import when_imported

ATTR = "_raas_config"


def config_of(server_args: Any) -> RaasConfig:
    """The RaaS config a record carries; a record built without the plugin's paths is plain dense."""
    found = getattr(server_args, ATTR, None)
    return found if isinstance(found, RaasConfig) else RaasConfig(page_size=server_args.page_size or 1)


def add_cli_args(result: Any, parser: argparse.ArgumentParser) -> Any:
    """AFTER hook on `ServerArgs.add_cli_args`."""
    group = parser.add_argument_group("RaaS KV policy (raas_sglang plugin)")
    group.add_argument(
        "--kv-policy",
        type=str,
        default=None,
        metavar="{" + ",".join(cfg.POLICIES) + "}",
        help=f"KV cache policy for decoding. 'dense' (default) is stock SGLang; 'raas' keeps the prompt pages "
        f"pinned and at most --raas-budget tokens of decode KV per request, evicting the page attended "
        f"longest ago; the baselines 'streaming' (sink page + recent window) and 'h2o' (accumulated attention + "
        f"recent half) keep the same budget. Without --page-size, the page size is {cfg.RAAS_DEFAULT_PAGE_SIZE} "
        f"for all but 'dense'.",
    )
    group.add_argument(
        "--raas-budget",
        type=str,
        default=None,
        metavar="TOKENS",
        help=f"Decode KV budget per request in tokens, rounded up to whole pages; at least "
        f"{cfg.MIN_BUDGET_PAGES} pages. Default {cfg.DEFAULT_BUDGET_TOKENS}. Only with --kv-policy raas.",
    )
    group.add_argument(
        "--raas-refresh-ratio",
        type=str,
        default=None,
        metavar="RATIO",
        help=f"Fraction in (0, 1] of a request's resident decode pages whose 'last attended' timestamp is "
        f"refreshed each step (top by score). Default {cfg.DEFAULT_REFRESH_RATIO}. Only with --kv-policy raas.",
    )
    group.add_argument(
        "--raas-refresh-threshold",
        type=str,
        default=None,
        metavar="MULTIPLE",
        help="A refreshed page must also get at least MULTIPLE times the mean score of the request's resident "
        f"decode pages; 0 = no threshold. Default {cfg.DEFAULT_REFRESH_THRESHOLD}. Only with --kv-policy raas.",
    )
    group.add_argument(
        "--raas-score",
        type=str,
        default=None,
        metavar="{" + ",".join(cfg.SCORES) + "}",
        help="How decode pages are scored: 'exact' attention mass from the decode pass (torch_native; triton "
        "through the plugin's own decode kernel), 'quest' key-bound estimates (any backend), 'auto' (default) "
        "exact on torch_native, quest elsewhere. Only with --kv-policy raas.",
    )
    group.add_argument(
        "--raas-reduce",
        type=str,
        default=None,
        metavar="{" + ",".join(cfg.REDUCES) + "}",
        help="How a page's per-head and per-layer scores combine (HEADS-LAYERS), before the top "
        f"--raas-refresh-ratio pages are refreshed. Default {cfg.DEFAULT_REDUCE}. Only with --kv-policy raas.",
    )
    group.add_argument(
        "--raas-reserve",
        type=str,
        default=None,
        metavar="FRACTION",
        help="Fraction in [0, 1) of a raas request's page limit kept for the decode pages with the highest "
        "accumulated score (heavy hitters), which the 'last attended' rule then never evicts; 0 is the paper's "
        f"rule alone. Default {cfg.DEFAULT_RESERVE}. Only with --kv-policy raas.",
    )
    return result


def _given(source: Any) -> dict[str, Any]:
    return {attr: getattr(source, attr, None) for attr in cfg.FLAGS.values()}


def from_cli_args(orig, cls, args: argparse.Namespace):
    """AROUND hook on `ServerArgs.from_cli_args`."""
    given = _given(args)
    try:
        args.page_size = cfg.default_page_size(given["kv_policy"] or cfg.DEFAULT_POLICY, args.page_size)
        raas = cfg.resolve(given, args.page_size or 1)
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    server_args = orig(cls, args)
    setattr(server_args, ATTR, raas)
    cpu_parallel.bind_threads(server_args)
    return server_args


def engine_server_args(**kwargs: Any):
    """`Engine.server_args_class` replacement: `ServerArgs(**kwargs)` plus the RaaS keywords."""
    from sglang.srt.server_args import ServerArgs

    given = {attr: kwargs.pop(attr, None) for attr in cfg.FLAGS.values()}
    kwargs["page_size"] = cfg.default_page_size(given["kv_policy"] or cfg.DEFAULT_POLICY, kwargs.get("page_size"))
    raas = cfg.resolve(given, kwargs["page_size"] or 1)
    if kwargs["page_size"] is None:
        del kwargs["page_size"]
    server_args = ServerArgs(**kwargs)
    setattr(server_args, ATTR, raas)
    cpu_parallel.bind_threads(server_args)
    return server_args


def install_engine_factory() -> None:
    """Point `Engine.server_args_class` at `engine_server_args` as soon as the engine module is loaded.

    NOTE: importing the engine module costs ~5 s, so it is never imported here just for this.
    """

    def patch(module):
        module.Engine.server_args_class = staticmethod(engine_server_args)

    when_imported("sglang.srt.entrypoints.engine", patch)


HOOKS = (
    ("sglang.srt.server_args.ServerArgs.add_cli_args", add_cli_args, "AFTER"),
    ("sglang.srt.server_args.ServerArgs.from_cli_args", from_cli_args, "AROUND"),
)
