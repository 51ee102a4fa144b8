"""The docs' commands that use the demo model run as written (the cheap ones), against the session's demo artifact.

Every fenced `sh` block of README.md and docs/*.md is read; each `sdrt` command in it that names the demo's paths
(models/demo, artifacts/demo, outputs/) runs in a directory where those paths are the test session's demo model and
artifact (exported as `make demo` exports it: 64..256 px, tuned for 128, batch 2). Commands that take minutes or
never return (export, build, bench, serve) are listed, not run: `make demo` and the tests of those commands run them.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from sdrt.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DEMO = re.compile(r"(?:^|\s)(?:models/demo|artifacts/demo|outputs/)")
NOT_RUN = ("export", "build", "bench", "serve", "demo-model")  # minutes, or a server that does not return


def shell_commands(page: Path) -> list[str]:
    """The commands of a page's fenced sh blocks, continuation lines joined and comments dropped."""
    commands, block = [], None
    for line in page.read_text().splitlines():
        if block is None:
            if line.strip() in ("```sh", "```bash", "```console"):
                block = []
            continue
        if line.strip() == "```":
            text = "\n".join(block).replace("\\\n", " ")
            commands += [c.strip() for c in text.splitlines() if c.strip()]
            block = None
            continue
        block.append(line)
    return [shlex.join(shlex.split(c, comments=True)) for c in commands if shlex.split(c, comments=True)]


def demo_commands() -> list[tuple[str, str]]:
    """(page, command) for each `sdrt` command that uses the demo model."""
    found = []
    for page in PAGES:
        for command in shell_commands(page):
            words = shlex.split(command)
            if words and Path(words[0]).name == "sdrt" and DEMO.search(command):
                found.append((page.name, command))
    return found


def test_the_docs_have_demo_commands():
    commands = demo_commands()
    assert any(c.split()[1] == "generate" for _, c in commands), commands


@pytest.fixture(scope="module")
def demo_dir(demo_model, artifact, tmp_path_factory):
    """A directory laid out as `make demo` leaves the checkout: models/demo, artifacts/demo, outputs/."""
    root = tmp_path_factory.mktemp("checkout")
    (root / "models").mkdir()
    (root / "artifacts").mkdir()
    (root / "outputs").mkdir()
    (root / "models" / "demo").symlink_to(demo_model)
    (root / "artifacts" / "demo").symlink_to(artifact)
    return root


def test_the_docs_demo_commands_run(demo_dir, monkeypatch, capsys):
    monkeypatch.chdir(demo_dir)
    ran = 0
    for page, command in demo_commands():  # in page order: a command may read what an earlier one wrote
        words = shlex.split(command)
        if words[1] in NOT_RUN:
            continue
        assert main(words[1:]) == 0, f"{page}: {command}\n{capsys.readouterr().err}"
        ran += 1
    assert ran > 0
