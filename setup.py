from setuptools import find_packages, setup

setup(
    name="sdrt",
    version="0.1.0",
    description="An optimized Stable Diffusion inference runtime: ONNX export, engines, and a lightweight runtime",
    packages=find_packages(include=["sdrt", "sdrt.*"]),
    package_data={"sdrt.single_file": ["configs/*.json"]},  # the published configs of each model family
    python_requires=">=3.10",
    install_requires=[
        # torch is not listed here on purpose: a bare 'torch' requirement pulls several GB of CUDA
        # wheels; install the build you want first (the Makefile installs torch==2.13.0 for the CPU).
        "diffusers>=0.35",
        "transformers>=4.45",
        "tokenizers",
        "safetensors",
        "onnx>=1.16",
        # ONNX Runtime comes from an extra: its CPU and GPU builds are two packages owning one module, and
        # installing both breaks it; pick sdrt[cpu] or sdrt[gpu]
        "onnx-graphsurgeon",  # fp16 export: constant folding and graph clean-up
        "numpy",
        "pillow",
        "tqdm",
        "scipy",
        "torchsde",  # the DPM++ SDE sampler's Brownian noise
        "opencv-python-headless",  # ControlNet's built-in preprocessors
        "fastapi",  # sdrt serve: the HTTP APIs
        "uvicorn",  # sdrt serve: the HTTP server
        "prometheus-client",  # sdrt serve: /metrics
        "python-multipart",  # sdrt serve: multipart uploads (OpenAI's image variations)
    ],
    extras_require={
        "cpu": ["onnxruntime>=1.18"],  # the onnxruntime backend (and fp16 export's converter) on the CPU
        "gpu": ["onnxruntime-gpu>=1.18"],  # the same with ONNX Runtime's CUDA provider (instead of sdrt[cpu])
        # the tensorrt backend: sdrt has a code path for TensorRT 10.x and one for 11.x (sdrt.engines.tensorrt_api),
        # checked against stand-ins of both APIs; neither has run on a GPU yet
        "tensorrt": ["tensorrt>=10.0,<12"],
        "openvino": ["openvino>=2025.0"],  # the openvino backend (CPU); tested with 2026.4.1
        "lora": ["peft>=0.17"],  # Pipeline.set_lora: diffusers reads LoRA files through peft's layers
        "serve-ray": ["ray[serve]"],  # sdrt serve --ray: scale-out on Ray Serve (large: Ray and its dependencies)
    },
    entry_points={"console_scripts": ["sdrt=sdrt.cli:main"]},
)
