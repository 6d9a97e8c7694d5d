"""Triton kernels for the RaaS decode hot path, each with a torch reference beside it (step 3).

Imports neither SGLang nor the policy core.
"""
