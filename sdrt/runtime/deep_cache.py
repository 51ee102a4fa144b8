"""DeepCache step caching (Ma et al., CVPR 2024) as a request parameter and a wrapper around the UNet call.

On a full step the whole UNet runs and keeps its branch's deep feature; on the steps between, only the shallow
branch runs, on the cached feature (`sdrt.deep_cache_unet`). Steps are counted as the authors' `DeepCacheSDHelper`
counts them: a UNet call's step is the index of its timestep's first occurrence in the scheduler's timesteps,
counted from the pass's first call, and a step is full when that count is a multiple of the interval. So a
second-order sampler's two calls at one timestep share a count, and image-to-image counts from its first step.
Each pass of a request (a refiner's, a hires fix's second) counts from its own first step, as the helper does
when it is enabled on that pass's pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sdrt.components import FEATURE
from sdrt.conditioning.guidance import CONCAT, CONTROL
from sdrt.engines import Engine, call_in_chunks
from sdrt.excerpt import excerpt
from sdrt.lazy import deferred
from sdrt.params import Param, check_declared, declare, declared
from sdrt.runtime.denoiser import Rows
from sdrt.runtime.timing import UNET, UNET_SHALLOW, StageClock

if TYPE_CHECKING:
    import torch
else:
    torch = deferred("torch")

MAX_INTERVAL = 1000
CLI_SYNTAX = "INTERVAL[:BRANCH]"


@dataclass(frozen=True)
class DeepCache:
    """DeepCache for a request: the whole UNet every `interval` steps, its shallow branch `branch` in between."""

    interval: int = declare(
        3, "int", "the whole UNet runs every INTERVAL steps (the helper's cache_interval)", minimum=1,
        maximum=MAX_INTERVAL, webui="override_settings.deep_cache_interval",
    )  # fmt: skip
    branch: int = declare(
        0, "int", "the skip branch whose deep feature is cached (the helper's cache_branch_id: 3 x block + layer)",
        minimum=0, webui="override_settings.deep_cache_branch",
    )  # fmt: skip

    def __post_init__(self) -> None:
        for name in ("interval", "branch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"deep_cache {name} {excerpt(value)} is not an integer")
        check_declared(self, prefix="deep_cache ")

    def full_steps(self, all_timesteps: torch.Tensor, window: torch.Tensor) -> tuple[bool, ...]:
        """Per call of a pass over `window` (a slice of the scheduler's `all_timesteps`): does the whole UNet run."""
        first_index: dict[float, int] = {}
        for i, t in enumerate(all_timesteps.tolist()):
            first_index.setdefault(t, i)
        steps = [first_index[t] for t in window.tolist()]
        return tuple((s - steps[0]) % self.interval == 0 for s in steps)

    def label(self) -> str:
        return f"{self.interval}:{self.branch}"


def parse_cli(text: str) -> DeepCache:
    """--deep-cache INTERVAL[:BRANCH], e.g. "3" or "3:1"."""
    parts = text.split(":")
    if len(parts) > 2 or not all(p.strip().lstrip("-").isdigit() for p in parts):
        raise ValueError(f"--deep-cache {text!r} is not {CLI_SYNTAX}, e.g. 3 or 3:1")
    return DeepCache(*(int(p) for p in parts))


PARAMS = (
    Param(
        "deep_cache",
        "object",
        "DeepCache step caching (off by default: it changes images): the whole UNet every INTERVAL steps, only its "
        f"shallow BRANCH between them (CLI: --deep-cache {CLI_SYNTAX})",
        owner="deep_cache",
        fields=declared(DeepCache, owner="deep_cache"),
        make=DeepCache,
        parse=parse_cli,
        webui="override_settings.deep_cache_interval",
    ),
)


class DeepCacheUNet:
    """The UNet call of a pass with DeepCache: the full network on full steps (its feature kept), the shallow one
    on the others. Feeds are the plain UNet's (CONCAT inputs already on the channels; ControlNet residuals given)."""

    def __init__(self, full: Engine, shallow: Engine, schedule: Sequence[bool], clock: StageClock) -> None:
        self.full, self.shallow = full, shallow
        self.schedule = tuple(schedule)
        self.clock = clock
        self.feature: torch.Tensor | None = None
        self.calls = {"full": 0, "shallow": 0}  # UNet calls of each kind this pass

    def __call__(self, rows: Rows) -> torch.Tensor:
        feeds = {"sample": rows.sample, "timestep": rows.timestep}
        feeds.update({n: t for n, t in rows.inputs.items() if rows.kinds.get(n) not in (CONCAT, CONTROL)})
        full = self.schedule[rows.step] or self.feature is None
        engine = self.full if full else self.shallow
        if not full:
            feeds[FEATURE] = self.feature
        given = {n: t for n, t in feeds.items() if n in set(engine.spec.input_names)}
        missing = [t for t in engine.spec.inputs if t.name not in given]
        if missing:  # residual inputs no ControlNet gave: zeros, which the UNet adds exactly
            given.update(_zeros(missing, rows))
        with self.clock.stage(UNET if full else UNET_SHALLOW):
            out = call_in_chunks(engine, given)
        self.calls["full" if full else "shallow"] += 1
        if full:
            self.feature = out[FEATURE]
        return out["noise_pred"]


def _zeros(specs, rows: Rows) -> dict[str, torch.Tensor]:
    m, _, h, w = rows.sample.shape
    values = {"cfg_batch": m, "batch": m, "latent_height": h, "latent_width": w}
    return {t.name: torch.zeros(t.concrete(values), dtype=t.torch_dtype, device=rows.sample.device) for t in specs}
