# shoal — two commands matter: `make cluster` (a local 3-node cluster in the
# foreground) and `make test` (everything, from nothing). Both set up the venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTO_OUT := proto/shoal_pb2.py proto/shoal_pb2_grpc.py proto/shoal_pb2.pyi
NODES ?= 3
BASE_PORT ?= 19092
DATA_DIR ?= .shoal-cluster

.PHONY: setup proto test test-fast cluster bench demo chaos chaos-soak prometheus promtool-check clean

setup: $(STAMP) $(PROTO_OUT)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

$(PROTO_OUT): proto/shoal.proto | $(STAMP)
	$(PY) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. proto/shoal.proto
	touch $(PROTO_OUT)

# The generated modules are committed; `make proto` regenerates them (tests/unit/test_proto_fresh.py
# fails when the committed modules are stale).
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. proto/shoal.proto

test: setup promtool-check
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup tests

test-fast: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

cluster: setup
	$(PY) -m client.cli cluster up --nodes $(NODES) --base-port $(BASE_PORT) --data-dir $(DATA_DIR)

bench: setup
	$(PY) tests/bench/run_all.py

demo: setup
	$(PY) deploy/demo.py --bootstrap 127.0.0.1:$(BASE_PORT)

chaos: setup
	$(PY) -m tests.chaos.run --all

chaos-soak: setup
	$(PY) -m tests.chaos.run --all --soak

prometheus: setup
	deploy/prometheus/run-prometheus.sh $(DATA_DIR)

promtool-check:
	deploy/prometheus/check.sh

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
