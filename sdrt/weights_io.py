"""Reading weight files as data: safetensors, and pickles only through torch's weights-only unpickler."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def load_pickle_weights_only(path: Path) -> Any:
    """A pickled file's tensors through torch's weights-only unpickler, which refuses anything that would run code."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{path.name} needs code to unpickle, which sdrt never runs (torch's weights-only loader refused it: "
            f"{str(exc).splitlines()[0]})"
        ) from exc
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise ValueError(f"{path.name} is not a readable torch file ({exc})") from exc
