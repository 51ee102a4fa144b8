# `make demo` and `make test` do all set-up on a fresh machine: a virtual environment with a
# CPU build of torch installed first (a bare `torch` requirement would pull GB of CUDA wheels).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SDRT := $(VENV)/bin/sdrt
STAMP := $(VENV)/.installed
TORCH ?= torch==2.13.0

DEMO_MODEL := models/demo
DEMO_ARTIFACT := artifacts/demo
DEMO_IMAGE := outputs/demo.png
DEMO_IMG2IMG := outputs/demo-img2img.png

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-nodeps.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

$(DEMO_MODEL)/model_index.json: | $(STAMP)
	$(SDRT) demo-model $(DEMO_MODEL)

demo: $(STAMP) $(DEMO_MODEL)/model_index.json
	$(SDRT) export $(DEMO_MODEL) -o $(DEMO_ARTIFACT) --max-batch 2 --min-size 64 --max-size 256 --opt-size 128 --overwrite
	$(SDRT) build $(DEMO_ARTIFACT) --backend onnxruntime
	$(SDRT) generate $(DEMO_ARTIFACT) "a photo of an (astronaut:1.2) riding a horse on the moon" \
		--negative-prompt "blurry, low quality" --steps 20 --seed 42 --scheduler "DPM++ 2M Karras" -o $(DEMO_IMAGE)
	$(SDRT) generate $(DEMO_ARTIFACT) "an oil painting of an astronaut riding a horse" --image $(DEMO_IMAGE) \
		--strength 0.6 --steps 20 --seed 42 --clip-skip 1 -o $(DEMO_IMG2IMG)
	@echo
	@echo "The demo model's weights are random: $(DEMO_IMAGE) (text-to-image) and $(DEMO_IMG2IMG)"
	@echo "(image-to-image from it) are abstract patterns, not pictures."
	@echo "For real images, point sdrt at a Stable Diffusion 1.x/2.x model in diffusers layout on disk:"
	@echo "  $(SDRT) export /path/to/stable-diffusion-v1-5 -o artifacts/sd15"
	@echo "  $(SDRT) build artifacts/sd15 --backend onnxruntime"
	@echo "  $(SDRT) generate artifacts/sd15 \"a photo of an astronaut riding a horse\" -o astronaut.png"

test: $(STAMP)
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check sdrt tests benchmarks scripts
	$(VENV)/bin/ruff format --check sdrt tests benchmarks scripts
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	PY=$(PY) bash benchmarks/cpu.sh

clean:
	rm -rf $(VENV) models artifacts outputs .pytest_cache
