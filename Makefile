# cdissect: one environment in .venv/, created by `make install` (pip; see README).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.cdissect-installed
PKGS := services/common services/labeler services/activations services/embedder cli shapes_world
PKG_FILES := $(addsuffix /pyproject.toml,$(PKGS))
APT_PACKAGES := prometheus chromium
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install test test-fast demo bench bench-labeler bench-pipeline bench-inline bench-memory bench-sae \
	device-wheels gpu-check shapes-models shapes-sae protos rehearse up down clean help

help:
	@echo "make install | test | test-fast | demo | bench | bench-labeler | bench-pipeline | bench-inline | bench-memory |" \
	      "bench-sae | device-wheels | gpu-check | shapes-models | shapes-sae | protos | rehearse | up | down | clean"

install: $(STAMP)

# Quick when nothing changed: the stamp depends on the lock and every pyproject.
$(STAMP): requirements.lock $(PKG_FILES) scripts/install_system_packages.sh
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24"
	$(PIP) install -q -r requirements.lock
	$(PIP) install -q --no-deps --no-build-isolation $(addprefix -e ,$(PKGS))
	bash scripts/install_system_packages.sh $(APT_PACKAGES)
	@touch $(STAMP)

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

demo: install
	$(VENV)/bin/cdissect demo

bench: install bench-pipeline bench-labeler bench-inline bench-memory bench-sae

# Extra arguments, e.g. make bench-pipeline PIPELINE_ARGS="--json --repeats 5"
PIPELINE_ARGS ?=
LABELER_ARGS ?= --threads 1
bench-pipeline: install
	$(PY) bench/bench_pipeline.py $(PIPELINE_ARGS)

bench-labeler: install
	$(PY) bench/bench_labeler.py $(LABELER_ARGS)

bench-inline: install
	$(PY) bench/bench_inline.py --unbatched

bench-memory: install
	$(PY) bench/bench_prefetch_memory.py

# The wheels bench/gpu_check.sh installs on the lent GPU machine (no network there): .whl/
device-wheels: install
	bash scripts/device_wheels.sh $(PIP)

# On the GPU machine: bash bench/gpu_check.sh (with .whl carried). Here: its CPU half.
gpu-check: install
	GPU_CHECK_MODE=cpu bash bench/gpu_check.sh

bench-sae: install
	$(PY) bench/bench_sae.py

shapes-models: install
	$(PY) -m cdissect_shapes.train_all

shapes-sae: install
	$(PY) -m cdissect_shapes.sae_trainer

protos: install
	$(PY) scripts/gen_protos.py

# The manifests' pods as local processes (no cluster needed): see deploy/README.md, "Rehearsal".
REHEARSE_IMAGES ?= 1200
rehearse: install
	$(PY) -m deploy.rehearse --images $(REHEARSE_IMAGES)

up:
	bash deploy/kind/up.sh

down:
	bash deploy/kind/down.sh

clean:
	rm -rf $(VENV) .pytest_cache
