PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MUTATE_STAMP := $(VENV)/.installed-mutate

.PHONY: install test typecheck demo lint fuzz mutate clean results peers peers-etcd peers-plenum \
	reliability reliability-crash reliability-hostile reliability-soak

install: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

test: install typecheck
	$(BIN)/ruff check phalanx tests tools
	$(BIN)/pytest -q

# mypy, strict (config in pyproject.toml: phalanx/, tools/, bench/); incremental through
# .mypy_cache, so a run after a small change takes about a second.
typecheck: install
	$(BIN)/mypy

demo: install
	$(BIN)/phalanx demo

# Peer baselines (not part of `make test`: minutes, and they install etcd / a Python 3.8
# venv): bench/peers/results/{etcd,plenum,plenum-below}.json; see docs/peers.md.
peers: peers-etcd peers-plenum

peers-etcd: install
	$(BIN)/python -m bench.peers.etcd_bench --clients 64 --payload 512 --duration 30 \
		--json bench/peers/results/etcd.json

peers-plenum: install
	$(BIN)/python -m bench.peers.plenum_bench --clients 512 --duration 45 \
		--json bench/peers/results/plenum.json
	$(BIN)/python -m bench.peers.plenum_bench --clients 32 --duration 45 \
		--json bench/peers/results/plenum-below.json

results: install  # the lab: calibrate, sweeps, validation, scaling -> docs/results.md
	$(BIN)/phalanx lab report --out docs

# The long Byzantine fuzz (not part of `make test`, which runs 300 seeds): FUZZ_SEEDS seeds
# of PBFT n=4 with one Byzantine replica, a tenth as many of n=7 with two, and a tenth over
# n other than 3f+1 (each seed draws n from 5, 6, 8, 10 with one Byzantine replica); see
# docs/testing.md.
FUZZ_SEEDS ?= 10000
fuzz: install
	nice -n 10 $(BIN)/phalanx fuzz --protocol pbft --n 4 --byzantine 1 \
		--seeds $(FUZZ_SEEDS) --first 100000 --progress 500
	nice -n 10 $(BIN)/phalanx fuzz --protocol pbft --n 7 --byzantine 2 \
		--seeds $$(( $(FUZZ_SEEDS) / 10 )) --first 200000 --progress 100
	nice -n 10 $(BIN)/phalanx fuzz --protocol pbft --n 5,6,8,10 --byzantine 1 \
		--seeds $$(( $(FUZZ_SEEDS) / 10 )) --first 300000 --progress 100

# Mutation testing of the core with mutmut (not part of `make test`: minutes per file).
# FILES=certificates (names or paths; default all four) chooses; a second run resumes and
# retests only the survivors; FRESH=1 starts over. Scores per file: docs/testing.md.
FILES ?=
mutate: $(MUTATE_STAMP)
	nice -n 10 $(BIN)/python tools/mutate.py $(if $(FRESH),--fresh) $(FILES)

$(MUTATE_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[dev,mutate]'
	touch $(MUTATE_STAMP)

# The reliability campaign, full size (not part of `make test`, which runs a small version
# of each harness; hours in all): reports as JSON (and the soak's plot) in RELIABILITY_OUT.
# See docs/reliability.md for what each checks and how long each takes here.
RELIABILITY_OUT ?= docs/reliability
CRASH_CYCLES ?= 1000
HOSTILE_FRAMES ?= 1000000
HOSTILE_HTTP ?= 100000
SOAK_SECONDS ?= 3600
reliability: reliability-crash reliability-hostile reliability-soak

reliability-crash: install  # four fifths of the cycles at n=4, a fifth at n=7 (two at once)
	nice -n 10 $(BIN)/phalanx reliability crash --n 4 --cycles $$(( $(CRASH_CYCLES) * 4 / 5 )) \
		--json $(RELIABILITY_OUT)/full-crash-n4.json
	nice -n 10 $(BIN)/phalanx reliability crash --n 7 --cycles $$(( $(CRASH_CYCLES) / 5 )) \
		--json $(RELIABILITY_OUT)/full-crash-n7.json

reliability-hostile: install
	nice -n 10 $(BIN)/phalanx reliability hostile --frames $(HOSTILE_FRAMES) \
		--http $(HOSTILE_HTTP) --json $(RELIABILITY_OUT)/full-hostile.json

reliability-soak: install  # at 70% of saturation, a view change every 5 minutes
	nice -n 10 $(BIN)/phalanx reliability soak --duration $(SOAK_SECONDS) --load 0.7 \
		--view-change-every 300 --json $(RELIABILITY_OUT)/full-soak.json \
		--png $(RELIABILITY_OUT)/full-soak.png

lint: install
	$(BIN)/ruff check phalanx tests tools

clean:
	rm -rf $(VENV) build *.egg-info .mutmut mutants .mypy_cache
