"""Seam: the startup refusals — what a budgeted `--kv-policy` cannot run with yet, refused before any child
process starts, with what to change.

Upstream symbols hooked (sglang 0.5.23, `sglang/srt/server_args.py`):

- `ServerArgs.check_server_args`, AFTER: runs once the record is resolved, on the CLI and `sgl.Engine` paths,
  before any child process starts. It evaluates the startup rows of the refusal registry
  (`raas_sglang/refusals.py`: the `flag.*` rows that need the resolved server, then the `startup.*` rows) over
  SGLang's resolved view (`sglang.srt.arg_groups.overrides.resolving_view`), the record's `RaasConfig` and the
  model config (`sglang.srt.arg_groups.model_override_base.model_config_of`) with SGLang's own hybrid
  linear-attention test (`sglang.srt.configs.hybrid_arch.mambaish_config`) and `envs.SGLANG_RUST_SERVER`
  (`sglang.srt.environ`), and refuses with one line: the CLI
  launcher exits (`SystemExit`, `error: ...`, no traceback), `sgl.Engine` raises `ConfigError`.
  A server that may start gets `tp_size` set on its config, and `exact_kernel` when it decodes on triton with
  `--raas-score exact`.
"""

from __future__ import annotations

import dataclasses

from raas_sglang.config import ConfigError
from raas_sglang.patches.server_args import ATTR, config_of
from raas_sglang.refusals import Startup, VersionMismatch, startup_refusal


def _model_config(server_args):
    """SGLang's `ModelConfig` of the record (the model rows read it). NOTE: not found is an SGLang version
    mismatch, which stops the server rather than skipping the model checks."""
    try:
        from sglang.srt.arg_groups.model_override_base import model_config_of
    except ImportError as err:
        raise VersionMismatch(f"raas_sglang: SGLang has no model_config_of ({err}; is this SGLang 0.5.23?); "
                              "refusing to start without the model checks") from None
    return model_config_of(server_args)


def _linear_attention(model) -> bool:
    """Whether SGLang builds linear-attention / state-space layers for this model (its own registry decides)."""
    if model is None:
        return False
    try:
        from sglang.srt.configs.hybrid_arch import mambaish_config
    except ImportError as err:
        raise VersionMismatch(f"raas_sglang: SGLang has no mambaish_config ({err}; is this SGLang 0.5.23?); "
                              "refusing to start without the model checks") from None
    return mambaish_config(model) is not None


def _rust_server() -> bool:
    from sglang.srt.environ import envs

    return bool(envs.SGLANG_RUST_SERVER.get())


def check_server_args(result, self, *args, **kwargs):
    """AFTER hook on `ServerArgs.check_server_args`."""
    config = config_of(self)
    if not config.enabled:
        return result
    from sglang.srt.arg_groups.overrides import resolving_view

    view = resolving_view(self)
    model = _model_config(self)
    refused = startup_refusal(Startup(view, config, model, _linear_attention(model), _rust_server()))
    if refused is not None:
        _refuse(self, refused[1])
    decode_backend = str(view.decode_attention_backend or view.attention_backend)
    exact_kernel = config.score == "exact" and decode_backend == "triton"
    # NOTE: the launcher's tokenizer side and (pickled with the args) every child see the same record
    setattr(self, ATTR, dataclasses.replace(config, exact_kernel=exact_kernel, tp_size=int(view.tp_size or 1),
                                            decode_backend=decode_backend))
    return result


def _refuse(server_args, message: str):
    if str(server_args.launch_command or "").startswith("Engine("):
        raise ConfigError(message)
    raise SystemExit(f"error: {message}")  # the CLI launcher: one line, no traceback


HOOKS = (("sglang.srt.server_args.ServerArgs.check_server_args", check_server_args, "AFTER"),)
