# ShaleDB developer commands. `make run` and `make test` are the whole set-up on a fresh machine.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DATA    ?= ./data

.PHONY: run demo test test-pure soak lint typecheck clean venv build redis-tools etcd

$(BIN)/python:
	$(PY) -m venv $(VENV)

# arq (tests/server/test_server_frameworks.py) pins redis<6 while Celery's transport needs
# redis>=6.1: no resolver can install both, and arq runs on the newer redis-py unchanged.
# The editable install itself is pure Python (SHALEDB_PURE_PYTHON=1 skips mypyc in pip's
# isolated build); `make build` then compiles in place with the venv's own mypyc.
$(STAMP): $(BIN)/python pyproject.toml setup.py
	$(BIN)/python -m pip install -q --upgrade pip 'setuptools>=77'
	SHALEDB_PURE_PYTHON=1 $(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps 'arq>=0.26'
	touch $(STAMP)

venv: $(STAMP)

# Compile the modules in src/shaledb/compiled_modules.txt with mypyc, in place (about a
# minute; nothing to do, in a fraction of a second, when they match their source). Without a
# C compiler this leaves the pure build, saying why. docs/design.md, "Compiled build".
build: $(STAMP)
	$(BIN)/python setup.py -q build_ext --inplace

# The server on 127.0.0.1:6380 with its data in $(DATA); stop it with Ctrl-C.
run: build
	$(BIN)/shaledb serve --host 127.0.0.1 --port 6380 --dir $(DATA)

# The embedded-engine demo (300k records; its own directory, not the server's).
demo: build
	$(BIN)/shaledb demo $(DATA)-demo

# redis-cli for the server tests (apt-get as root; otherwise those tests skip, saying why).
redis-tools:
	@scripts/ensure-redis-tools.sh

# etcd for the failover tests (tests/cluster/; apt-get install etcd-server as root;
# otherwise those tests skip, saying why). The tests start their own etcd on loopback.
etcd:
	@scripts/ensure-etcd.sh

# Two processes for everything but the tests that assert latency or wall-clock bounds
# (marked `timing`), which then run alone so that a neighbour's load cannot fail them.
# `make test` runs the compiled build (and fails if the modules did not compile while a C
# compiler is present: a silent fallback would test the wrong build); `make test-pure` runs the
# same suite on the pure-Python source. .ci/run runs both.
TEST_WORKERS ?= 2
EXPECT_BUILD ?= $(if $(shell command -v cc),compiled,)
test: build lint redis-tools etcd
	SHALEDB_EXPECT_BUILD=$(EXPECT_BUILD) $(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m 'not soak and not timing'
	SHALEDB_EXPECT_BUILD=$(EXPECT_BUILD) $(BIN)/python -m pytest -q -m 'timing and not soak'

test-pure: $(STAMP) redis-tools etcd
	SHALEDB_PURE_PYTHON=1 SHALEDB_EXPECT_BUILD=pure $(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m 'not soak and not timing'
	SHALEDB_PURE_PYTHON=1 SHALEDB_EXPECT_BUILD=pure $(BIN)/python -m pytest -q -m 'timing and not soak'

soak: build etcd
	$(BIN)/python -m pytest -q -m soak -p no:cacheprovider --timeout=3600

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts setup.py
	$(BIN)/mypy

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build dist src/*.egg-info src/*.so src/shaledb/_build_info.json
	find src -name '*.so' -delete .pytest_cache .mypy_cache .ruff_cache .hypothesis

# -- benchmarks (bench/; not part of `make test`) -------------------------------------------
# make bench        1M keys, every store and workload; rewrites docs/benchmarks.md (20-40 min)
# make bench-large  ShaleDB at 1M, 5M and 20M keys; the scale section of docs/benchmarks.md
# make bench-quick  tiny smoke run of everything (under 2 minutes); report under bench-data/
# Extra options: make bench BENCH_ARGS='--stores shaledb,lmdb --workloads fillrandom'
BENCH_STAMP := $(VENV)/.installed-bench
BENCH_ARGS  ?=

.PHONY: bench bench-large bench-quick bench-server bench-hostile

BENCH_PEERS := zstandard lmdb rocksdict plyvel diskcache sqlitedict matplotlib pyinstrument

# A peer that cannot be installed here is skipped by the harness (with a note), not fatal.
$(BENCH_STAMP): $(STAMP) pyproject.toml
	SHALEDB_PURE_PYTHON=1 $(BIN)/python -m pip install -q -e '.[bench]' || for p in $(BENCH_PEERS); do \
	  $(BIN)/python -m pip install -q $$p || echo "bench: could not install $$p; skipped"; done
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) build
	$(BIN)/python -m bench --keys 1000000 --stores all $(BENCH_ARGS)

bench-large: $(BENCH_STAMP) build
	$(BIN)/python -m bench --scale --sizes 1M,5M,20M --timeout 7200 $(BENCH_ARGS)

bench-quick: $(BENCH_STAMP) build
	$(BIN)/python -m bench --quick $(BENCH_ARGS)

# make bench-server  redis-benchmark (SET/GET, -c 50, -d 100, with and without -P 16) against
#                    `shaledb serve` and a real redis-server (AOF everysec; then SET with
#                    appendfsync always on both) on loopback ports, printing the ratio
#                    (installs redis-tools/redis-server with apt as root)
bench-server: build
	$(BIN)/python scripts/bench_server.py $(BENCH_ARGS)

# make bench-hostile  the hostile-client mix (bench/hostile.py: reset storms, slowloris,
#                     amplification, pattern bombs, fd floods, ...) for HOSTILE_SECONDS (300)
#                     against `shaledb serve` and then a real redis-server with the same limits,
#                     printing peak RSS, PING latency and what each got wrong (installs
#                     redis-server with apt as root)
HOSTILE_SECONDS ?= 300
bench-hostile: build
	@command -v redis-server >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null 2>&1; } || \
	  echo "bench-hostile: redis-server not installed (Debian package redis-server)"
	$(BIN)/python -m bench.hostile --target both --duration $(HOSTILE_SECONDS) \
	  --json bench-results/hostile.json $(BENCH_ARGS)
