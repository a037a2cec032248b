# Thin wrappers over the `appliance` CLI and pytest. `make test` and `make iso` work on a fresh Debian host (root).
PY ?= python3
PIP = $(PY) -m pip install -q --disable-pip-version-check
STAMP = .make

.PHONY: deps test bench iso boot-test clean

# torch is pinned first on its own: 2.13.0 is the CPU wheel on these hosts; an unpinned torch pulls GBs of CUDA.
$(STAMP)/deps: pyproject.toml
	mkdir -p $(STAMP)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[cpu,transformers,dev]'
	touch $@

# Fonts to render the CJK test images (tests make their own images with Pillow).
$(STAMP)/test-apt:
	mkdir -p $(STAMP)
	if ! fc-list 2>/dev/null | grep -qi 'WenQuanYi Micro Hei'; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-wqy-microhei fonts-dejavu-core fontconfig >/dev/null; fi
	# Headless Debian chromium for the web UI's browser tests (driven by playwright, which downloads nothing).
	if ! command -v chromium >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi
	touch $@

deps: $(STAMP)/deps

test: $(STAMP)/deps $(STAMP)/test-apt
	$(PY) -m pytest -q

bench: $(STAMP)/deps $(STAMP)/test-apt
	$(PY) -m bench.cpu_engine

iso: $(STAMP)/deps
	@echo "The image builder is not implemented yet (issue: image builder)." >&2; exit 2

clean:
	rm -rf $(STAMP) out .pytest_cache
