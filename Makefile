PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= configs/quickstart.toml

.PHONY: run test test-slow test-ci test-ci-slow install clean

# The slow tests CI runs after the fast set: the fault cases that drive real engine processes,
# gradient accumulation with the neural memory, the console end to end in tmux, a second engine
# refused on a live run, a live run whose checkpoint disk fills (2 min 13 s on 2 shared cores);
# a rank of a 2-process run killed (follower, lead) and resumed across world sizes, and the console's
# commands on a 2-process run (about 30 s each); the Dexter models trained end to end (about 2 min).
CI_SLOW = tests/faults/test_fault_processes.py \
	tests/faults/test_fault_memory.py::test_accumulated_gradient_with_memory_and_ragged_answers \
	tests/test_e2e_tmux.py \
	tests/test_runlock.py \
	tests/faults/test_fault_disk.py \
	tests/faults/test_fault_distributed.py \
	tests/test_distributed.py::test_commands_take_effect_on_every_rank_at_one_boundary \
	tests/test_dexter_train.py

$(BIN)/lab: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(BIN)/lab

install: $(BIN)/lab

run: install
	$(BIN)/lab launch $(CONFIG)

# the fast set in one worker process per core (at most 4): the tests run single-threaded and many wait on
# engine processes, so a 2-core machine takes about 6 minutes instead of 10; each file stays in one worker,
# so its module fixtures are built once
test: install
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile

test-slow: install
	$(BIN)/python -m pytest -q -m slow

# what CI runs: the fast set, then the slow tests above
test-ci: test test-ci-slow

test-ci-slow: install
	$(BIN)/python -m pytest -q -m slow $(CI_SLOW)

clean:
	rm -rf $(VENV)
