"""The one denoiser the sampling loop sees, built from wrappers around the UNet engine.

The loop calls `denoiser(latents, t, i)` with the scheduler-scaled latents of the batch's N images and gets
their guided noise prediction back, as k-diffusion's samplers call `model(x, sigma)`. Inside, each wrapper
does one job on the UNet's batch of rows (`Rows`): `Guided` expands the images into classifier-free guidance
rows and combines the prediction; `ConcatChannels` puts the conditioning's CONCAT inputs (inpainting's mask and
masked image) on the latents' channels; `UNetCall` feeds the engine its named inputs. A new per-step network
(ControlNet) is one more wrapper, not a branch in the loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from sdrt.conditioning.guidance import CONCAT, CONTROL, ClassifierFreeGuidance, Conditioning
from sdrt.engines import Engine, call_in_chunks
from sdrt.lazy import deferred
from sdrt.runtime.timing import StageClock

if TYPE_CHECKING:
    import torch
else:
    torch = deferred("torch")


@dataclass(frozen=True)
class Rows:
    """The UNet's batch at one step: M rows, each an image's conditional or unconditional pass."""

    sample: torch.Tensor  # (M, C, h, w) scaled latents, latent channels only
    timestep: torch.Tensor  # (M,) float32
    inputs: Mapping[str, torch.Tensor]  # every named conditioning input, M rows each
    kinds: Mapping[str, str]  # input name -> its kind (Conditioning.kinds)
    images: torch.Tensor  # (M,) int64: the image of the batch each row is for
    conditional: torch.Tensor  # (M,) bool: the row's pass is conditional (else the guided image's unconditional)
    step: int  # index of this call in the pass's timesteps
    steps: int  # timesteps of the pass

    def named(self, kind: str) -> list[str]:
        return [n for n in self.inputs if self.kinds.get(n) == kind]


class RowDenoiser(Protocol):
    """A UNet-like callable on rows: (M, ...) prediction for the rows' samples."""

    def __call__(self, rows: Rows) -> torch.Tensor: ...


class UNetCall:
    """The UNet engine: sample, timestep and the named inputs (not CONCAT or CONTROL ones) as its feeds.

    Inputs the UNet's spec has that no wrapper gave (ControlNet residuals on a request without ControlNet) are
    fed as zeros, which the UNet adds exactly as if it had no such input.
    """

    def __init__(self, engine: Engine, clock: StageClock) -> None:
        self.engine = engine
        self.clock = clock
        self._zeros: dict[tuple, dict[str, torch.Tensor]] = {}

    def __call__(self, rows: Rows) -> torch.Tensor:
        feeds = {"sample": rows.sample, "timestep": rows.timestep}
        feeds.update({n: t for n, t in rows.inputs.items() if rows.kinds.get(n) not in (CONCAT, CONTROL)})
        missing = [t for t in self.engine.spec.inputs if t.name not in feeds]
        if missing:
            feeds.update(self.zeros(missing, rows))
        with self.clock.stage("unet"):
            return call_in_chunks(self.engine, feeds)["noise_pred"]

    def zeros(self, specs, rows: Rows) -> dict[str, torch.Tensor]:
        """Zero feeds for inputs no wrapper gave, sized from the rows (made once per shape)."""
        m, _, h, w = rows.sample.shape
        key = (m, h, w, rows.sample.device)
        if key not in self._zeros:
            values = {"cfg_batch": m, "batch": m, "latent_height": h, "latent_width": w}
            self._zeros[key] = {
                t.name: torch.zeros(t.concrete(values), dtype=t.torch_dtype, device=rows.sample.device) for t in specs
            }
            if len(self._zeros) > 8:  # a few shapes at a time: a server's batches come in few sizes
                self._zeros.pop(next(iter(self._zeros)))
        return self._zeros[key]


class ConcatChannels:
    """The conditioning's CONCAT inputs appended to the latents on the channel axis, in the order they were given."""

    def __init__(self, inner: RowDenoiser) -> None:
        self.inner = inner

    def __call__(self, rows: Rows) -> torch.Tensor:
        concat = rows.named(CONCAT)
        if not concat:
            return self.inner(rows)
        sample = torch.cat([rows.sample, *(rows.inputs[n] for n in concat)], dim=1)
        return self.inner(replace(rows, sample=sample))


class Guided:
    """The loop's denoiser: N images -> classifier-free guidance rows -> the row denoiser -> guided prediction.

    The conditioning may change at given steps (prompt editing); its rows are expanded again only then.
    `calls` counts UNet calls, which prompt-editing schedules count in (a later pass starts from `calls_before`).
    """

    def __init__(
        self, inner: RowDenoiser, cfg: ClassifierFreeGuidance, conditioning: Conditioning, calls_before: int = 0
    ) -> None:
        self.inner = inner
        self.cfg = cfg
        self.conditioning = conditioning
        self.calls = calls_before
        self._current: Conditioning | None = None
        self._expanded: dict[str, torch.Tensor] = {}
        n = len(cfg.scales)
        index = torch.arange(n, device=cfg.device)
        self._images = torch.cat([cfg.guided, index])
        self._conditional = torch.cat(
            [
                torch.zeros(cfg.num_uncond, dtype=torch.bool, device=cfg.device),
                torch.ones(n, dtype=torch.bool, device=cfg.device),
            ]
        )

    def __call__(self, latents: torch.Tensor, t: torch.Tensor, step: int, steps: int) -> torch.Tensor:
        part = self.conditioning.at(self.calls)
        if part is not self._current:
            self._current, self._expanded = part, self.cfg.expand(part.cond, part.uncond)
        self.calls += 1
        timestep = t.to(torch.float32).expand(latents.shape[0]).contiguous()
        expanded = self.cfg.expand({"sample": latents, "timestep": timestep})
        rows = Rows(
            sample=expanded["sample"],
            timestep=expanded["timestep"],
            inputs=self._expanded,
            kinds=part.kinds,
            images=self._images,
            conditional=self._conditional,
            step=step,
            steps=steps,
        )
        return self.cfg.combine(self.inner(rows))
