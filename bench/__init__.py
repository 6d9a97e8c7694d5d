"""Benchmarks (`python -m bench.<name> --json PATH`), per ../shared/measure.md. Added from step 2 on."""
