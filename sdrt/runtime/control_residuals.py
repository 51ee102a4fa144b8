"""The ControlNet wrapper of the denoiser: each step, every ControlNet of the batch runs once for the rows that use
it, and the residuals it adds inside the UNet are summed per row (diffusers' MultiControlNet).

Per use (one unit on one image): residual i is scaled by the unit's scale times its mode's factor (1; the web UI
extension's soft weights 0.825^(12-i) for "prompt" and "control"; diffusers' guess-mode logspace(-1, 0)), only
at the steps its window keeps (diffusers' rule: step i of n is kept unless i/n < start or (i+1)/n > end), and
only on the conditional rows for guess mode, the "control" mode and ControlNets with global pooling (their
unconditional rows get no residual). Rows that use no ControlNet at a step get zeros, which the UNet adds exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from sdrt.engines import Engine, call_in_chunks
from sdrt.runtime.denoiser import RowDenoiser, Rows
from sdrt.runtime.timing import StageClock

SOFT_WEIGHT = 0.825  # the extension's soft injection: residual i of 13 (SD) times 0.825 ** (12 - i)


@dataclass(frozen=True)
class Use:
    """One unit on one image of the batch."""

    image: int  # the image's index in the batch
    hint: torch.Tensor  # (1, 3, H, W) the map the ControlNet reads
    weights: torch.Tensor  # (R,) float32: each residual's factor
    start: float  # control_guidance_start
    end: float  # control_guidance_end
    conditional_only: bool  # the unconditional rows get no residual from it

    def kept(self, step: int, steps: int) -> bool:
        """diffusers' controlnet_keep for this step of the pass."""
        return not (step / steps < self.start or (step + 1) / steps > self.end)


@dataclass(frozen=True)
class ControlNetEngine:
    """A loaded ControlNet as the wrapper runs it."""

    name: str  # for errors and timings
    engine: Engine
    residuals: tuple[str, ...]  # output names = the UNet's residual input names, down blocks then the mid block
    row_inputs: tuple[str, ...]  # the UNet conditioning inputs it reads too (text states; SDXL's added vectors)
    global_pool: bool  # its residuals are averaged over the image (a "shuffle" ControlNet)


def residual_weights(count: int, scale: float, mode: str, guess: bool, global_pool: bool) -> torch.Tensor:
    """(count,) float32 factors of a unit's residuals (down blocks, then the mid block) for a mode."""
    if guess and not global_pool:  # diffusers: torch.logspace(-1, 0, n) * conditioning_scale
        return torch.logspace(-1, 0, count) * scale
    if mode in ("prompt", "control"):  # the extension's list is 13 long; SDXL's 10 residuals take its first 10
        return torch.tensor([scale * SOFT_WEIGHT ** float(12 - i) for i in range(count)], dtype=torch.float32)
    return torch.full((count,), float(scale), dtype=torch.float32)


class ControlNetResiduals:
    """Runs the batch's ControlNets on their rows each step and hands the UNet the summed residuals."""

    def __init__(
        self, inner: RowDenoiser, nets: Sequence[tuple[ControlNetEngine, Sequence[Use]]], clock: StageClock
    ) -> None:
        self.inner = inner
        self.nets = [(net, list(uses)) for net, uses in nets if uses]
        self.clock = clock

    def __call__(self, rows: Rows) -> torch.Tensor:
        sums: dict[str, torch.Tensor] = {}
        images, conditional = rows.images.tolist(), rows.conditional.tolist()
        for net, uses in self.nets:
            pairs = [
                (m, use)
                for use in uses
                if use.kept(rows.step, rows.steps)
                for m, image in enumerate(images)
                if image == use.image and (conditional[m] or not use.conditional_only)
            ]
            if not pairs:
                continue
            index = torch.tensor([m for m, _ in pairs], dtype=torch.int64, device=rows.sample.device)
            feeds = {
                "sample": rows.sample[index],
                "timestep": rows.timestep[index],
                **{name: rows.inputs[name][index] for name in net.row_inputs},
                "controlnet_cond": torch.cat([use.hint for _, use in pairs]).to(rows.sample.device),
            }
            with self.clock.stage("controlnet"):
                out = call_in_chunks(net.engine, feeds)
            weights = torch.stack([use.weights for _, use in pairs]).to(rows.sample.device)  # (P, R)
            for i, name in enumerate(net.residuals):
                residual = out[name] * weights[:, i].view(-1, 1, 1, 1)
                if net.global_pool:
                    residual = residual.mean(dim=(2, 3), keepdim=True).expand_as(out[name])
                if name not in sums:
                    sums[name] = residual.new_zeros((rows.sample.shape[0], *residual.shape[1:]))
                sums[name].index_add_(0, index, residual)
        if not sums:
            return self.inner(rows)
        return self.inner(replace(rows, inputs={**rows.inputs, **sums}))
