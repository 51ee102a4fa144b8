"""The C++ library's own unit tests (file formats, UTF-8, Unicode normalization, JSON, shape checks, and the engine
calls of a generation through a backend the test registers: one class), run as one program."""

from __future__ import annotations

import re
import subprocess


def test_cpp_unit_tests_pass(cpp_tools, artifact, tmp_path):
    result = subprocess.run([str(cpp_tools.unit_tests), str(tmp_path), str(artifact)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    passed, total = map(int, re.search(r"(\d+)/(\d+) checks passed", result.stdout).groups())
    assert passed == total and total >= 51
