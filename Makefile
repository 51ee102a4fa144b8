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

CPP_BUILD := build/cpp

.PHONY: install demo test lint bench clean cpp

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

# The C++ runtime (cpp/, see cpp/README.md): its library, sdrt-cpp and its test tools in build/cpp/, built against
# the OpenVINO C++ runtime inside the venv's openvino wheel. cpp/tools/toolchain.sh installs a missing compiler,
# CMake or zlib from Debian's packages where it can (as root: CI).
cpp: $(STAMP)
	bash cpp/tools/toolchain.sh
	cmake -S cpp -B $(CPP_BUILD) -DCMAKE_BUILD_TYPE=Release -DSDRT_WERROR=ON \
		-DOpenVINO_DIR="$$($(PY) -c 'import openvino, pathlib; print(pathlib.Path(openvino.__file__).parent / "cmake")')"
	cmake --build $(CPP_BUILD) --parallel 2

# The C++ unit tests, then the Python suite (tests/cpp compare the C++ runtime with the Python one). Without a C++
# toolchain that can be installed, the C++ parts are skipped with the reason.
test: $(STAMP)
	@if bash cpp/tools/toolchain.sh; then $(MAKE) --no-print-directory cpp && $(CPP_BUILD)/sdrt-cpp-tests $(CPP_BUILD)/unit-tests; \
	else echo "make test: no C++ toolchain; the C++ runtime's tests are skipped"; fi
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check sdrt tests benchmarks scripts
	$(VENV)/bin/ruff format --check sdrt tests benchmarks scripts
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	PY=$(PY) bash benchmarks/cpu.sh

clean:
	rm -rf $(VENV) models artifacts outputs .pytest_cache $(CPP_BUILD)
