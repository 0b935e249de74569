# kernelrace: `make bench` runs the benchmark comparison, `make test` runs the tests.
# Each creates .venv if absent and installs what it needs; nothing else is assumed
# but Python >= 3.11, pip and gcc.
#
# Variables (make VAR=value):
#   PYTHON=python3     interpreter the venv is made from
#   ANCHORS=auto       auto: install primesieve/torch when they install without a download
#                      of their own (libprimesieve-dev present / torch wheel on disk);
#                      1: install them, with apt-get for libprimesieve-dev if missing;
#                      0: no anchors
#   BENCH=regex        only asv benchmarks matching regex (default: the whole suite)
#   QUICK=1            one sample per benchmark (asv --quick) and 3 rounds per race (the paired
#                      ratios): a first look, no statistics
#   ROUNDS=1           asv rounds (processes per benchmark); 2 is asv's default: steadier, 2x longer
#   ASV_MACHINE=name   asv machine name for the results (default: this host's name)
#   BENCH_DATA=dir     scratch folder where a run's asv processes share attention caches (emptied after)
#   BASE=HEAD~1 HEAD=HEAD FACTOR=1.10   for `make regress` (the paired gate; RUN=0 judges
#                      stored asv results instead, unpaired); POINTS=all for the whole grid
#   KIND=aa RUNS=5     for `make gate-check` (aa: false alarms; slow: detection, SLOWDOWN=0.15)
#   TEST_WORKERS=auto  pytest-xdist processes for `make test` (auto: one per core, at most 4;
#                      0: one process, the tests in file order)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
ANCHORS ?= auto
BENCH ?=
QUICK ?=
ROUNDS ?= 1
ASV_MACHINE ?= $(shell hostname 2>/dev/null || echo local)
BASE ?= HEAD~1
HEAD ?= HEAD
FACTOR ?= 1.10
TEST_WORKERS ?= auto
BENCH_DATA ?= $(CURDIR)/.asv/bench-data

ASV := $(VENV)/bin/asv
KR := $(VENV)/bin/kernelrace
ASV_SELECT := $(if $(BENCH),--bench '$(BENCH)') $(if $(QUICK),--quick,-a rounds=$(ROUNDS))

.PHONY: all bench test test-slow benchmark-pytest regress gate-check asv-check lint verify anchors clean help

all: help

help:
	@sed -n '1,21p' Makefile

# --- environment ------------------------------------------------------------

$(PY):
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "kernelrace needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Stamps: reinstall only when pyproject.toml changes.
$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[test,bench,distributed]'
	@touch $@

$(VENV)/.installed-bench: pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[test,bench,distributed]'
	@$(MAKE) --no-print-directory anchors
	@touch $@

anchors: | $(PY)
	@case "$(ANCHORS)" in \
	  0) echo "anchors: skipped (ANCHORS=0)";; \
	  1) if [ ! -e /usr/include/primesieve.h ]; then \
	       echo "anchors: installing libprimesieve-dev and primesieve-bin with apt-get"; \
	       SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	       $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq libprimesieve-dev primesieve-bin; \
	     fi; \
	     $(PIP) install --quiet -e '.[anchors]';; \
	  *) if [ -e /usr/include/primesieve.h ]; then \
	       $(PIP) install --quiet 'primesieve>=2.3' || echo "anchors: primesieve did not build; the sieve runs without its anchor"; \
	     else \
	       echo "anchors: no libprimesieve-dev here, so no primesieve anchor (make bench ANCHORS=1 installs it)"; \
	     fi; \
	     { $(PIP) install --quiet --no-index --no-deps 'torch==2.13.0' 2>/dev/null \
	       && $(PIP) install --quiet 'torch==2.13.0'; } \
	       || echo "anchors: no torch wheel on disk, so no torch anchor (make bench ANCHORS=1 downloads it)";; \
	esac

# --- the two commands ---------------------------------------------------------

# The main job: check every strategy, calibrate the machine, run the asv suite in this
# environment, and write results/report.md and results/plots/.
bench: $(VENV)/.installed-bench
	$(KR) list
	$(KR) verify
	@# asv reports an import error in the suite as one terse line; import it here first.
	$(PY) -c 'import importlib, pathlib; [importlib.import_module("benchmarks." + p.stem) for p in sorted(pathlib.Path("benchmarks").glob("bench_*.py"))]'
	$(ASV) machine --yes --machine '$(ASV_MACHINE)'
	$(KR) machine
	@# asv exits non-zero when any benchmark failed; the report still shows the rest
	@# and names the failures, then make fails with asv's status.
	@# Attention caches are built once per run and loaded by every point that needs them.
	@# The shared caches take GiBs: removed on every way out, Ctrl-C and SIGTERM included.
	@# asv's forkserver imports the suite once and forks a process per point (a fresh
	@# interpreter cost 0.5-0.7 s of imports per point); kernels.harness.asvrun lets
	@# SIGTERM close that server as Ctrl-C does (docs/report.md, "How make bench runs").
	rm -rf '$(BENCH_DATA)'
	trap "rm -rf '$(BENCH_DATA)'" EXIT; trap 'exit 130' INT; trap 'exit 143' TERM; \
	KERNELRACE_BENCH_DATA='$(BENCH_DATA)' $(if $(QUICK),KERNELRACE_RACE_ROUNDS=3) \
	$(PY) -m kernels.harness.asvrun run --python=same --launch-method forkserver \
	  --machine '$(ASV_MACHINE)' --set-commit-hash $$(git rev-parse HEAD) \
	  --show-stderr $(ASV_SELECT); status=$$?; rm -rf '$(BENCH_DATA)'; \
	$(KR) report --asv-machine '$(ASV_MACHINE)' || exit $$?; \
	echo "report: results/report.md, plots: results/plots/, asv results: results/asv/$(ASV_MACHINE)/"; \
	if [ $$status -ne 0 ]; then echo "asv: some benchmarks failed (exit $$status); see above and the report's notes"; fi; \
	exit $$status

# The tests in parallel processes (pytest-xdist): most of a cold run is numba compiling
# its kernels, one core at a time, and each process compiles its share. loadgroup keeps
# the tests that compile the same attention kernels in one process (tests/conftest.py).
test: $(VENV)/.installed-test
	$(PY) -m pytest -n $(TEST_WORKERS) --maxprocesses 4 --dist loadgroup

# --- more ------------------------------------------------------------------

test-slow: $(VENV)/.installed-test
	$(PY) -m pytest -m slow

verify: $(VENV)/.installed-test
	$(KR) verify

# pytest-benchmark timings of the tests' benchmark fixtures, saved under .benchmarks/;
# COMPARE=0001 (or a saved run's name) compares against that run.
benchmark-pytest: $(VENV)/.installed-test
	$(PY) -m pytest --benchmark-enable --benchmark-only --benchmark-autosave \
	  $(if $(COMPARE),--benchmark-compare=$(COMPARE) --benchmark-compare-fail=median:10%)

# The regression gate: BASE and HEAD timed in alternation, each in its own checkout and
# environment, paired statistics over the suite's regression set (docs/regressions.md).
# Exit 0 no regression; kernelrace compare exits 1 on a regression and 2 on an error,
# which make reports as its own exit 2. RUN=0 judges asv results already stored
# (unpaired: it cannot tell a small change from the machine's drift).
regress: $(VENV)/.installed-test
	$(KR) compare '$(BASE)' '$(HEAD)' --factor $(FACTOR) \
	  $(if $(filter 0,$(RUN)),--machine '$(ASV_MACHINE)',--run $(if $(filter all,$(POINTS)),--all-points)) \
	  $(if $(BENCH),--bench '$(BENCH)') $(if $(JSON),--json '$(JSON)')

# The gate's error rates, measured: RUNS gate runs of HEAD against a docs-only commit
# (KIND=aa) or against estimate_pi made SLOWDOWN slower (KIND=slow); tallies under
# results/gate_check/.
KIND ?= aa
RUNS ?= 5
SLOWDOWN ?= 0.15
gate-check: $(VENV)/.installed-test
	$(PY) -m benchmarks.gate_check $(KIND) --runs $(RUNS) --factor $(FACTOR) --slowdown $(SLOWDOWN)

# asv's own per-commit environment, built and used once for a quick benchmark of HEAD,
# so that `asv run A..B` and `asv continuous` keep working (CI runs this).
# asv run rewrites results/asv/benchmarks.json (the reference runs' metadata): kept aside
# and put back, whatever the run's outcome.
asv-check: $(VENV)/.installed-test
	$(ASV) machine --yes --machine asv-check >/dev/null
	@mkdir -p .asv && cp results/asv/benchmarks.json .asv/benchmarks.json.kept
	$(ASV) run --quick --machine asv-check --show-stderr --bench 'Sizes.track_kv_bytes_ratio_to_mha' 'HEAD^!'; \
	  rc=$$?; mv .asv/benchmarks.json.kept results/asv/benchmarks.json; \
	  rm -rf results/asv/asv-check; exit $$rc

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check kernels benchmarks tests

clean:
	rm -rf .asv build *.egg-info .pytest_cache .benchmarks .hypothesis results/html
