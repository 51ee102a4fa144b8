"""The C++ runtime (cpp/) built once per session with CMake, and the artifacts its tests run."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import export

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "build" / "cpp"  # where `make cpp` builds too: after it, the session's build is a no-op


@dataclass(frozen=True)
class CppTools:
    """The programs `cpp/` builds: the command, the inspection tool the tests drive, the C++ unit tests."""

    sdrt_cpp: Path
    inspect: Path
    unit_tests: Path

    def inspect_json(self, *args: str, stdin: object | None = None) -> object:
        """Run sdrt-cpp-inspect with `args` (and `stdin` as JSON) and parse what it prints."""
        result = subprocess.run(
            [str(self.inspect), *args],
            input=None if stdin is None else json.dumps(stdin),
            capture_output=True,
            text=True,
        )
        if result.returncode:
            raise AssertionError(f"sdrt-cpp-inspect {' '.join(args)} failed: {result.stderr}")
        return json.loads(result.stdout)


@pytest.fixture(scope="session")
def cpp_tools() -> CppTools:
    """cpp/ configured against the openvino wheel's C++ runtime and built (skipped where no toolchain is installed)."""
    cmake = shutil.which("cmake")
    compiler = shutil.which("c++") or shutil.which("g++")
    if cmake is None or compiler is None:
        pytest.skip("the C++ runtime needs CMake and a C++17 compiler (make cpp installs them where it can)")
    openvino = pytest.importorskip("openvino", reason="the C++ runtime builds against the openvino wheel's C++ runtime")
    openvino_dir = Path(openvino.__file__).parent / "cmake"
    steps = [
        [
            cmake,
            "-S",
            str(REPO / "cpp"),
            "-B",
            str(BUILD),
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DOpenVINO_DIR={openvino_dir}",
        ],
        [cmake, "--build", str(BUILD), "--parallel", "2"],
    ]
    for step in steps:
        result = subprocess.run(step, capture_output=True, text=True)
        if result.returncode:
            pytest.fail(f"building cpp/ failed ({' '.join(step)}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return CppTools(BUILD / "sdrt-cpp", BUILD / "sdrt-cpp-inspect", BUILD / "sdrt-cpp-tests")


@pytest.fixture(scope="session")
def sd2_artifact(sd2_model, tmp_path_factory) -> Path:
    """The tiny SD 2.x model (v-prediction, DDIM as its own scheduler) exported for RANGES."""
    return export(sd2_model, tmp_path_factory, "sd2-cpp")
