# crishim: `make run` serves the CRI socket, `make test` runs the whole suite (as root, on Debian 12).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := iproute2 iptables util-linux procps containernetworking-plugins runc crun conmon \
	skopeo umoci docker-registry busybox-static catatonit python3-venv ca-certificates
CNI_CONF_DIR ?= /etc/cni/net.d
N ?= 200
# Debian's containerd, installed for the bench only: its pull rows run containerd beside crishim, and
# `make bench PEER=containerd` runs the container path side by side with it.
PEER ?=
BENCH_PACKAGES := containerd
PYTEST_ARGS ?=

.PHONY: install apt venv run test lint proto bench clean

install: apt venv

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

run: install
	@mkdir -p $(CNI_CONF_DIR)
	@if [ -z "$$(ls $(CNI_CONF_DIR) 2>/dev/null)" ]; then \
		install -m 0644 crishim/data/10-crishim-bridge.conflist $(CNI_CONF_DIR)/; \
		echo "installed the default CNI network into $(CNI_CONF_DIR)"; \
	fi
	$(VENV)/bin/crishim serve

test: install lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

proto: venv
	PYTHON=$(PY) sh scripts/gen_proto.sh

bench: install
	@missing=$$(for p in $(BENCH_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing for the bench:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
ifeq ($(PEER),)
	$(PY) -m bench --pods $(N)
else
	$(PY) -m bench --peer $(PEER) --pods $(N)
endif

clean:
	rm -rf $(VENV) build *.egg-info
