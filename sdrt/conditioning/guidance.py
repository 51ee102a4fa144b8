"""Classifier-free guidance (Ho & Salimans, 2022), batched: unconditional and conditional rows in one UNet call.

The one row rule lives here: an image is guided when its scale is above 1, and the UNet's batch is
[unconditional rows of guided images; conditional rows of all images]. Conditioners ask `guided_items`
which unconditional rows to encode; the loop asks `expand` for the UNet's feeds and `combine` for the
guided prediction. Every named input (sample, timestep, text states, pooled embeddings, time ids, class
labels) goes through the same `expand`, so no input can be ordered differently from another.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TypeVar

from sdrt.lazy import deferred

if TYPE_CHECKING:
    import torch
else:
    torch = deferred("torch")


T = TypeVar("T")


def is_guided(scale: float) -> bool:
    """Guidance at `scale` needs an unconditional pass (a scale of 1 or less is the conditional prediction alone)."""
    return scale > 1.0


# The kinds of conditioning inputs (tinygrad's SDXL Conditioner routes embedders' outputs the same way):
CROSSATTN = "crossattn"  # states the UNet's cross-attention reads (encoder_hidden_states)
VECTOR = "vector"  # vectors added to the time embedding: pooled text, SDXL's time ids, unCLIP's image embedding
CONCAT = "concat"  # channels concatenated to the latents: inpainting's mask and masked image, a low-res image
CONTROL = "control"  # images a ControlNet reads (its hint), which the UNet never sees
KINDS = (CROSSATTN, VECTOR, CONCAT, CONTROL)


@dataclass(frozen=True)
class Conditioning:
    """The UNet's conditioning inputs by name: one row per image (cond), one row per guided image (uncond).

    `kinds` says what each input is (a KINDS value; a name not listed is a CROSSATTN or VECTOR input fed to the
    UNet by name): the denoiser routes CONCAT inputs onto the latents' channels and CONTROL inputs to ControlNets.
    """

    cond: Mapping[str, torch.Tensor]  # name -> (N, ...) for the N images of a batch
    uncond: Mapping[str, torch.Tensor] = field(default_factory=dict)  # name -> (K, ...) for its K guided images
    # prompt editing: (first step, the conditioning from that step on), ascending; this one conditions before
    later: tuple[tuple[int, Conditioning], ...] = ()
    kinds: Mapping[str, str] = field(default_factory=dict)  # input name -> its kind, for inputs not fed by name

    def __post_init__(self) -> None:
        if self.uncond and set(self.uncond) - set(self.cond):
            raise ValueError(f"conditioning names {sorted(self.cond)} but unconditional {sorted(self.uncond)}")
        starts = [start for start, _ in self.later]
        if starts != sorted(set(starts)) or (starts and starts[0] < 1):
            raise ValueError(f"conditioning switches at steps {starts}: they must ascend from 1")
        unknown = {k for k in self.kinds.values() if k not in KINDS}
        if unknown:
            raise ValueError(f"conditioning kinds {sorted(unknown)} are not among {', '.join(KINDS)}")

    def named(self, kind: str) -> list[str]:
        """The inputs of one kind, in the order they were added (CROSSATTN/VECTOR: those without a listed kind)."""
        if kind in (CROSSATTN, VECTOR):
            return [n for n in self.cond if self.kinds.get(n, kind) in (CROSSATTN, VECTOR)]
        return [n for n in self.cond if self.kinds.get(n) == kind]

    def merged(self, other: Conditioning) -> Conditioning:
        """This conditioning and `other`'s inputs together, at every step either schedule switches at."""
        starts = sorted({0, *(s for s, _ in self.later), *(s for s, _ in other.later)})
        parts = []
        for start in starts:
            a, b = self.at(start), other.at(start)
            clash = set(a.cond) & set(b.cond)
            if clash:
                raise ValueError(f"two conditioning parts both give {sorted(clash)}")
            parts.append(
                (
                    start,
                    Conditioning({**a.cond, **b.cond}, {**a.uncond, **b.uncond}, kinds={**self.kinds, **other.kinds}),
                )
            )
        return Conditioning.scheduled(parts)

    def at(self, step: int) -> Conditioning:
        """The conditioning of denoising step `step` (UNet calls counted from 0)."""
        current = self
        for start, part in self.later:
            if step < start:
                break
            current = part
        return current

    def with_inputs(
        self, cond: Mapping[str, torch.Tensor], uncond: Mapping[str, torch.Tensor], kind: str | None = None
    ) -> Conditioning:
        """This conditioning with more named inputs (of `kind`), the same at every step of its schedule.

        An input with no unconditional rows given takes the conditional rows of the guided images in the UNet's
        batch (what diffusers does for the inpainting mask: the same for both passes).
        """
        kinds = dict(self.kinds) if kind is None else {**self.kinds, **{name: kind for name in cond}}
        return replace(
            self,
            cond={**self.cond, **cond},
            uncond={**self.uncond, **uncond},
            later=tuple((start, part.with_inputs(cond, uncond, kind)) for start, part in self.later),
            kinds=kinds,
        )

    @classmethod
    def scheduled(cls, parts: Sequence[tuple[int, Conditioning]]) -> Conditioning:
        """One conditioning from (first step, conditioning) parts in step order, the first starting at step 0."""
        (start, head), *rest = parts
        if start != 0:
            raise ValueError(f"the first part of a conditioning schedule starts at step 0, not {start}")
        return replace(head, later=tuple(rest))


class ClassifierFreeGuidance:
    """Per-sample guidance scales; samples with scale <= 1 skip the unconditional pass.

    Requests with different scales (or none) share one call; guided samples get
    `uncond + scale * (cond - uncond)`.
    """

    def __init__(self, scales: Sequence[float], device: torch.device) -> None:
        self.device = device  # where the UNet's feeds live
        self.scales = torch.tensor([float(s) for s in scales], dtype=torch.float32)
        self._guided_list = [i for i, s in enumerate(scales) if is_guided(float(s))]
        self.guided = torch.tensor(self._guided_list, dtype=torch.int64, device=device)
        self._guided_scales = self.scales[self._guided_list].to(device)

    @property
    def num_uncond(self) -> int:
        return len(self._guided_list)

    def guided_items(self, items: Sequence[T]) -> list[T]:
        """The entries of a per-image sequence that get an unconditional row, in the UNet's order."""
        return [items[i] for i in self._guided_list]

    def expand(
        self, inputs: Mapping[str, torch.Tensor], uncond: Mapping[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """The UNet's feeds: each input (N rows) preceded by its unconditional rows.

        Those are `uncond[name]` (K rows) where given (text states of the negative prompts), else the input's
        own rows of the guided images (the latents and timesteps, which are the same for both passes).
        """
        if not self.num_uncond:
            return dict(inputs)
        uncond = uncond or {}
        out = {}
        for name, tensor in inputs.items():
            rows = uncond[name] if name in uncond else tensor[self.guided]
            if rows.shape[0] != self.num_uncond:
                raise ValueError(f"{name} has {rows.shape[0]} unconditional rows for {self.num_uncond} guided images")
            out[name] = torch.cat([rows, tensor])
        return out

    def combine(self, noise: torch.Tensor) -> torch.Tensor:
        """Guided noise prediction (N, ...) from the UNet's output on the expanded batch."""
        k = self.num_uncond
        if k == 0:
            return noise
        uncond, cond = noise[:k], noise[k:]
        scale = self._guided_scales.view(-1, *([1] * (noise.dim() - 1)))
        guided = uncond + scale * (cond[self.guided] - uncond)
        if k == cond.shape[0]:
            return guided
        out = cond.clone()
        out[self.guided] = guided
        return out
