"""Benchmarks (`python -m bench.<name> --json PATH`), per docs/benchmarks.md. Added from step 2 on."""
