"""Write the CUDA execution provider option names of onnxruntime-gpu, for tests/engines/test_onnxruntime_names.py.

The CPU build of ONNX Runtime that sdrt's CI installs has no CUDA provider, so the names of its options
cannot be checked against the installed library. This script downloads the onnxruntime-gpu wheel of the
version sdrt pins for the CPU (requirements.txt), reads the string table of its
`libonnxruntime_providers_cuda.so`, and writes which of the provider's option names it holds. The names
are those `onnxruntime/core/providers/cuda/cuda_execution_provider_info.cc` declares
(`provider_option_names`); one that is no longer in the library is listed as missing.

    python scripts/onnxruntime_names.py [--version 1.31.1] [--wheels DIR] [--out tests/engines/onnxruntime_names]

Session and run configuration keys need no table: the test reads them from the installed CPU library.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from tensorrt_names import download, rodata_strings  # noqa: E402 (this directory's sibling script)

CUDA_OPTIONS = (  # cuda_execution_provider_info.cc, namespace provider_option_names
    "device_id",
    "has_user_compute_stream",
    "user_compute_stream",
    "gpu_mem_limit",
    "arena_extend_strategy",
    "cudnn_conv_algo_search",
    "do_copy_in_default_stream",
    "gpu_external_alloc",
    "gpu_external_free",
    "gpu_external_empty_cache",
    "cudnn_conv_use_max_workspace",
    "enable_cuda_graph",
    "cudnn_conv1d_pad_to_nc1d",
    "tunable_op_enable",
    "tunable_op_tuning_enable",
    "tunable_op_max_tuning_duration_ms",
    "enable_skip_layer_norm_strict_mode",
    "prefer_nhwc",
    "use_ep_level_unified_stream",
    "use_tf32",
    "sdpa_kernel",
    "fuse_conv_bias",
)
PROVIDER = "CUDAExecutionProvider"


def pinned_version() -> str:
    """The onnxruntime version requirements.txt pins."""
    for line in (Path(__file__).parents[1] / "requirements.txt").read_text().splitlines():
        if line.startswith("onnxruntime=="):
            return line.split("==", 1)[1].strip()
    raise SystemExit("requirements.txt pins no onnxruntime version")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=None, help="onnxruntime-gpu version (default: requirements.txt's pin)")
    wheels = Path.home() / ".cache" / "sdrt" / "onnxruntime-wheels"
    parser.add_argument("--wheels", type=Path, default=wheels, help="where downloaded wheels are kept")
    parser.add_argument("--out", type=Path, default=Path("tests/engines/onnxruntime_names"), help="where tables go")
    args = parser.parse_args(argv)
    version = args.version or pinned_version()
    args.wheels.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    wheel = download("onnxruntime-gpu", version, args.wheels)
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith("/libonnxruntime_providers_cuda.so"))
        library = archive.read(name)
    rodata = b"\0" + b"\0".join(rodata_strings(library))
    found = [o for o in CUDA_OPTIONS if o.encode() + b"\0" in rodata]  # whole, or the tail of a longer string
    missing = [o for o in CUDA_OPTIONS if o not in found]
    lines = [
        f"# ONNX Runtime {version}: the CUDA execution provider's option names (scripts/onnxruntime_names.py).",
        f"# strings: {wheel.name}, {Path(name).name} sha256 {hashlib.sha256(library).hexdigest()}",
        "# names: onnxruntime/core/providers/cuda/cuda_execution_provider_info.cc (provider_option_names)",
        f"# not in this library: {' '.join(missing) or 'none'}",
        *(f"{PROVIDER}.{o}" for o in found),
    ]
    path = args.out / f"{version}.txt"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    print(f"{path}: {len(found)} option names, {len(missing)} missing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
