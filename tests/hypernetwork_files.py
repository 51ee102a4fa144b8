"""Hypernetwork files as the web UI's `Hypernetwork.save` writes them, with random weights, for the tests."""

from __future__ import annotations

from pathlib import Path

import torch

ACTIVATION_SLOTS = {None: 0, "linear": 0}  # activations without parameters hold one place in the layer numbering


def hypernetwork_state(
    width: int,
    g: torch.Generator,
    structure=(1, 2, 1),
    activation: str | None = "relu",
    layer_norm: bool = False,
    dropout=None,
    activate_output: bool = False,
    scale: float = 0.3,
    old: bool = False,
) -> dict[str, torch.Tensor]:
    """One side's module state dict, numbered as the web UI's Sequential numbers it (activations, norms and
    dropouts hold places); `old`: the first hypernetworks' linear1 / linear2 keys."""
    if old:
        hidden = 2 * width
        return {
            "linear1.weight": torch.randn(hidden, width, generator=g) * scale / width**0.5,
            "linear1.bias": torch.randn(hidden, generator=g) * scale,
            "linear2.weight": torch.randn(width, hidden, generator=g) * scale / hidden**0.5,
            "linear2.bias": torch.randn(width, generator=g) * scale,
        }
    state, at = {}, 0
    for i in range(len(structure) - 1):
        n_in, n_out = int(width * structure[i]), int(width * structure[i + 1])
        state[f"linear.{at}.weight"] = torch.randn(n_out, n_in, generator=g) * scale / n_in**0.5
        state[f"linear.{at}.bias"] = torch.randn(n_out, generator=g) * scale
        at += 1
        last = i >= len(structure) - 2
        if activation not in (None, "linear") and (not last or activate_output):
            at += 1
        if layer_norm:
            state[f"linear.{at}.weight"] = 1 + torch.randn(n_out, generator=g) * 0.1
            state[f"linear.{at}.bias"] = torch.randn(n_out, generator=g) * 0.1
            at += 1
        if dropout is not None and dropout[i + 1] > 0:
            at += 1
    return state


def write_hypernetwork(path: Path, widths, seed: int, old: bool = False, **settings) -> Path:
    """A .pt file: width -> (keys module, values module) state dicts, and the settings the web UI saves."""
    g = torch.Generator().manual_seed(seed)
    data: dict = {w: (hypernetwork_state(w, g, old=old, **settings), hypernetwork_state(w, g, old=old, **settings))
                  for w in widths}  # fmt: skip
    if not old:
        data.update(
            {
                "step": 1200,
                "name": path.stem,
                "layer_structure": list(settings.get("structure", (1, 2, 1))),
                "activation_func": settings.get("activation", "relu"),
                "is_layer_norm": settings.get("layer_norm", False),
                "weight_initialization": "Normal",
                "sd_checkpoint": "0123456789",
                "sd_checkpoint_name": "demo",
                "activate_output": settings.get("activate_output", False),
                "use_dropout": settings.get("dropout") is not None,
                "dropout_structure": list(settings["dropout"]) if settings.get("dropout") is not None else None,
                "last_layer_dropout": False,
                "optional_info": None,
            }
        )
    torch.save(data, path)
    return path
