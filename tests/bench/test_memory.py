"""A fresh process's peak RSS is its own, not its parent's (the cold start's memory column)."""

from __future__ import annotations

import subprocess
import sys

from sdrt.bench.memory import process_peak_rss

_CHILD = "from sdrt.bench.memory import process_peak_rss; print(process_peak_rss())"


def test_a_child_of_a_large_process_reports_its_own_peak():
    ballast = bytearray(600 * 2**20)  # 600 MiB, touched so it is resident
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    assert process_peak_rss() >= 600 * 2**20
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True)
    del ballast
    child = int(out.stdout.strip())
    # an interpreter importing sdrt.bench.memory (and torch through sdrt) stays well under the parent's ballast
    assert 0 < child < 500 * 2**20, f"the child reports {child / 2**20:.0f} MiB"
