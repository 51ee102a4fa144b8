"""Seeds equal across languages: the C++ generator draws what torch.Generator("cpu").manual_seed(seed) + randn draw.

torch picks its normal kernel by CPU (an AVX2 kernel with Cephes polynomials and fused multiply-adds on CPUs with
AVX2 and FMA, a portable libm one elsewhere, forced by ATEN_CPU_CAPABILITY=default); the C++ generator reproduces
both, bit for bit, and picks the one torch picks. Each case draws several tensors in a row from one generator, so
the scalar path's cached second value (under 16 elements) and the redrawn tail (counts not a multiple of 16) count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

SEEDS = [0, 1, 42, 12345, 2**31 + 7, 2**32 + 42, 2**64 - 1]
# one generator, these draws in a row: under 16 (scalar path, its cache), 16, tails, latent-sized tensors
COUNTS = [1, 3, 15, 16, 17, 31, 100, 4 * 9 * 13, 4 * 16 * 16, 4 * 128 * 128]

_REFERENCE = """
import json, sys, torch
seeds, counts = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out = []
for seed in seeds:
    g = torch.Generator("cpu").manual_seed(seed)
    out.append([torch.randn(n, generator=g).tolist() for n in counts])
print(json.dumps(out))
"""


def torch_draws(kernel: str) -> list:
    """torch's draws for every seed, in a fresh process (torch picks its CPU kernels at import)."""
    env = dict(os.environ)
    env.pop("ATEN_CPU_CAPABILITY", None)
    if kernel == "default":
        env["ATEN_CPU_CAPABILITY"] = "default"
    result = subprocess.run(
        [sys.executable, "-c", _REFERENCE, json.dumps(SEEDS), json.dumps(COUNTS)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(result.stdout)


def _has_avx2_fma() -> bool:
    try:
        flags = open("/proc/cpuinfo").read().split()
    except OSError:
        return False
    return "avx2" in flags and "fma" in flags


@pytest.mark.parametrize("kernel", ["avx2", "default"])
def test_randn_is_torch_bit_for_bit(cpp_tools, kernel):
    if kernel == "avx2" and not _has_avx2_fma():
        pytest.skip("this CPU has no AVX2 and FMA: torch never runs its AVX2 normal kernel here")
    reference = torch_draws(kernel)
    for seed, expected in zip(SEEDS, reference, strict=True):
        got = cpp_tools.inspect_json("randn", kernel, str(seed), *map(str, COUNTS))
        for count, a, b in zip(COUNTS, got, expected, strict=True):
            a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
            assert a.shape == b.shape == (count,)
            assert np.array_equal(a, b), f"seed {seed}, {count} elements: {int((a != b).sum())} values differ"


def test_native_kernel_is_torchs(cpp_tools):
    """Without a forced kernel the C++ generator picks the kernel torch picks on this machine."""
    import torch

    g = torch.Generator("cpu").manual_seed(42)
    expected = [torch.randn(n, generator=g).tolist() for n in (64, 5, 20)]
    assert cpp_tools.inspect_json("randn", "native", "42", "64", "5", "20") == expected
