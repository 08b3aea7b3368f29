# dfpipe: every target installs what it needs first, so each works on a fresh clone.
PYTHON ?= python3
DEMO_DIR ?= out/demo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# The install step the test targets run first (`make test-slow INSTALL=` skips it, as CI does after `make test`).
INSTALL ?= install
# No "running pip as root" warning in containers and CI.
export PIP_ROOT_USER_ACTION := ignore
# Install steps print one line each; what apt and pip print goes to this log (shown in full on failure).
INSTALL_LOG ?= out/install.log
QUIETLY = bash scripts/quietly.sh $(INSTALL_LOG)
APT_INSTALL = sh -c '$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$0'

.PHONY: install system-deps browser-deps lock demo test test-slow test-cluster test-all lint bench clean

system-deps:
	@command -v ffmpeg >/dev/null || $(QUIETLY) "apt: ffmpeg (test clips, the demo's sample)" $(APT_INSTALL) ffmpeg

# Headless Chromium for the review page's browser test (the default tier); that test is skipped, saying
# why, where it cannot be installed.
browser-deps:
	@command -v chromium >/dev/null || $(QUIETLY) "apt: chromium (the review page's browser test)" $(APT_INSTALL) chromium \
		|| echo "chromium could not be installed: the browser test will be skipped"

# Exact versions from the lock (requirements-test.lock = requirements.lock + the test tools), so a
# fresh install next year gets the stack the tests passed on.
install: system-deps
	@$(QUIETLY) "pip: the locked stack (requirements-test.lock)" $(PYTHON) -m pip install -r requirements-test.lock
	@$(QUIETLY) "pip: dfpipe itself (editable)" $(PYTHON) -m pip install --no-deps -e .

# Refresh the locks from requirements.txt / requirements-test.txt: every package to its newest
# version they allow (PACKAGE=numpy upgrades only that one). Review the diff, run the tests, commit.
LOCK = $(PYTHON) -m piptools compile --quiet --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links
lock:
	$(PYTHON) -m pip install -q pip-tools==7.6.2
	$(LOCK) $(if $(PACKAGE),--upgrade-package $(PACKAGE),--upgrade) -o requirements.lock requirements.txt
	$(LOCK) $(if $(PACKAGE),--upgrade-package $(PACKAGE),--upgrade) -c requirements.lock -o requirements-test.lock requirements-test.txt

# The main job on the embedded default: generated sample data, a local Ray, local files.
# A second `make demo` reuses everything already computed.
demo: install
	@[ -d $(DEMO_DIR)/dataset ] || $(QUIETLY) "sample: 44 generated videos in $(DEMO_DIR)/dataset" \
		$(PYTHON) -m dfpipe.sampledata $(DEMO_DIR)/dataset --videos 40 --frames 40 --parts 5 --seed 0
	$(PYTHON) jobs/run.py --input $(DEMO_DIR)/dataset --output $(DEMO_DIR)/run --config configs/demo.yaml

# The default tier: every test but the slow ones (tests/conftest.py sets the tiers), in minutes.
test: install browser-deps
	$(PYTHON) -m pytest

# The slow tier: job processes with their own Ray, killed actors, drivers and trainings, a flaky S3,
# the bad-input corpus, the real clips, the benchmarks' tiny runs, and every property test run large.
# DFPIPE_TEST_CHAIN=DIR (set by .ci/run for both tiers) lets it reuse the chain the default tier built.
test-slow: $(INSTALL)
	$(PYTHON) -m pytest -m "(slow or property) and not cluster" --hypothesis-profile=thorough

# The cluster tier: a head with no CPUs and two worker nodes with private disks on this machine
# (tests/cluster.py), jobs through `ray job submit`: token auth, storage some node cannot see refused,
# the pipeline and rescore S3 to S3 with a worker node lost in every step.
test-cluster: $(INSTALL)
	$(PYTHON) -m pytest -m cluster

# Both tiers in one run (the chain built once).
test-all: install browser-deps
	$(PYTHON) -m pytest -m "not cluster" --hypothesis-profile=thorough

lint:
	$(PYTHON) -m ruff check dfpipe jobs tests bench scripts
	$(PYTHON) -m ruff format --check dfpipe jobs tests bench scripts

bench: install
	$(PYTHON) bench/extract_throughput.py

clean:
	rm -rf out .pytest_cache .ruff_cache
