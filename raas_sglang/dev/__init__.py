"""Development tooling, not the plugin: the tiny model and the toy reasoner the tests and benchmarks serve, the
server launcher they use, and `make demo`. Nothing under `raas_sglang.patches` or the core imports this package.

- `tiny_model`: builds `.models/tiny` offline (a 2-layer Llama with its own tokenizer).
- `toy_task`, `toy_reasoner`: the reasoning task and the small model trained on it (`models/toy-reasoner`).
- `launch`: start/stop a CPU (or GPU) SGLang server in its own process group; `Server` helpers.
- `demo`: `make demo`.
"""
