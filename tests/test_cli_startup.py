"""The CLI starts at once: help, `info` and `doctor`'s first line import neither torch nor diffusers nor transformers.

Checked by what a fresh interpreter has imported (sys.modules), not by the clock: a test that times would pass
or fail with the machine's load.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import sdrt

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers")
# runs the CLI in a fresh interpreter and prints what of HEAVY it imported, and what it printed
PROBE = """
import contextlib, io, json, sys
from sdrt.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        code = main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
print(json.dumps({"code": code, "out": out.getvalue(), "heavy": [m for m in HEAVY if m in sys.modules]}))
""".replace("HEAVY", repr(HEAVY))


def run_cli(*argv: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True
    )
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["demo-model", "--help"],
        ["export", "--help"],
        ["build", "--help"],
        ["detect", "--help"],
        ["info", "--help"],
        ["bench", "--help"],
        ["doctor", "--help"],
        ["serve", "--help"],
        ["generate", "--help"],
        ["upscale", "--help"],
    ],
)
def test_help_imports_no_model_library(argv):
    result = run_cli(*argv)
    assert result["code"] == 0 and "usage: sdrt" in result["out"]
    assert result["heavy"] == []


def test_help_lists_every_command():
    out = run_cli("--help")["out"]
    for command in ("demo-model", "export", "build", "generate", "detect", "info", "bench", "doctor", "serve"):
        assert command in out


def test_info_summarizes_without_torch(artifact):
    result = run_cli("info", str(artifact), "-q")  # -q after the command, too
    assert result["code"] == 0 and result["heavy"] == []
    lines = result["out"].splitlines()
    assert lines[1].startswith("family    sd1")
    assert "networks  text_encoder " in result["out"] and " MB, unet " in result["out"]
    assert "sizes     64..256 px, tuned for 128; batch 1..2" in result["out"]
    assert "on disk   " in result["out"]


def test_generate_help_lists_the_declared_parameters():
    # its flags come from every feature's and family's declarations: their modules read torch on first use only
    result = run_cli("generate", "--help")
    assert result["heavy"] == []
    out = result["out"]
    for flag in ("--steps", "--hires-scale", "--noise-level", "--aesthetic-score", "--control", "--deep-cache", "-q"):
        assert flag in out


def test_the_package_offers_its_names_lazily():
    done = subprocess.run(
        [sys.executable, "-c", f"import sys, sdrt; print([m for m in {HEAVY!r} if m in sys.modules])"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == "[]"
    from sdrt.runtime.pipeline import Pipeline

    assert sdrt.Pipeline is Pipeline and sdrt.Control.__name__ == "Control" and sdrt.Hires.__name__ == "Hires"
    with pytest.raises(AttributeError, match="has no attribute 'Nothing'"):
        sdrt.Nothing  # noqa: B018
