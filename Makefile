# Two commands on a fresh machine: `make run` and `make test`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
NPROC   ?= 2
ARGS    ?=
STAMP   := $(VENV)/.installed

.PHONY: run test bench install clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)  ## the default federated job: 2 ranks on this machine (scripts/run_local.sh)
	NPROC=$(NPROC) PYTHON=$(PY) scripts/run_local.sh $(ARGS)

test: $(STAMP)  ## the whole test suite
	$(PY) -m pytest -q

bench: $(STAMP)  ## framework vs minimal torch.distributed program (needs MNIST)
	$(PY) scripts/bench.py $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache
