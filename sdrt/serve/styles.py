"""Prompt styles from a CSV file in the web UI's `styles.csv` format, applied to prompts as the web UI applies them."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sdrt.excerpt import check_text, excerpt

PROMPT_PLACEHOLDER = "{prompt}"  # where a style's text puts the request's prompt; without it the style is appended


@dataclass(frozen=True)
class PromptStyle:
    """A named style: text merged into the prompt and the negative prompt."""

    name: str
    prompt: str = ""
    negative_prompt: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"style name {excerpt(self.name)} is empty: every style needs a name")
        for field in ("name", "prompt", "negative_prompt"):
            check_text(f"style {field}", getattr(self, field))


def read_styles(path: str | os.PathLike) -> tuple[PromptStyle, ...]:
    """The styles of a web UI styles.csv (columns name, prompt, negative_prompt; a header row names them)."""
    file = Path(path)
    try:
        with file.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle, skipinitialspace=True))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"styles file {file} cannot be read: {exc}") from exc
    styles = []
    for number, row in enumerate(rows, start=2):
        if "name" not in row:
            raise ValueError(f"styles file {file} has no 'name' column; its header must be name,prompt,negative_prompt")
        if not (row.get("name") or "").strip():
            continue  # the web UI skips unnamed rows
        try:
            styles.append(PromptStyle(row["name"], row.get("prompt") or "", row.get("negative_prompt") or ""))
        except ValueError as exc:
            raise ValueError(f"styles file {file}, line {number}: {exc}") from exc
    return tuple(styles)


def merge_prompt(style_text: str, prompt: str) -> str:
    """The prompt with one style's text: put in place of {prompt}, or appended after ", "."""
    if PROMPT_PLACEHOLDER in style_text:
        return style_text.replace(PROMPT_PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def apply_styles(
    styles: Mapping[str, PromptStyle], names: Sequence[str], prompt: str, negative_prompt: str
) -> tuple[str, str]:
    """(prompt, negative prompt) with the named styles merged in, in order; ValueError naming an unknown style."""
    for name in names:
        style = styles.get(name)
        if style is None:
            known = ", ".join(repr(n) for n in styles) or "none (start the server with --styles FILE.csv)"
            raise ValueError(f"styles: {excerpt(name)} is not a style of this server; known: {known}")
        prompt = merge_prompt(style.prompt, prompt)
        negative_prompt = merge_prompt(style.negative_prompt, negative_prompt)
    return prompt, negative_prompt
