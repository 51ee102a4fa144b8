"""Multi-pass work as a workflow of requests: the refiner hand-off and the hires fix.

A pass whose plan says something follows ends in a `Continuation`: the requests of the later pass (each its
own request, with its input latents or image, its generators' states, where it starts) and what makes the
original request's result from theirs. `run_all` runs them here, grouping them with any pass requests of the
same key; a server's batcher queues them instead, so second passes batch with other queued work rather than
only with their own first batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING

from PIL import Image

from sdrt.lazy import deferred
from sdrt.params import Param
from sdrt.runtime.hires import infotext_fields, upscale_image, upscale_latents
from sdrt.runtime.plan import HIRES, REFINER, UPSCALE
from sdrt.runtime.request import GenerationRequest
from sdrt.runtime.results import GenerationResult, added, batch_timings, results
from sdrt.runtime.timing import Timings

if TYPE_CHECKING:
    import torch

    from sdrt.runtime.runner import PassOutput, Runner
    from sdrt.runtime.sampling import Progress
else:
    torch = deferred("torch")

PARAMS = (
    Param(
        "refiner_switch_at",
        "float",
        "with a refiner: share of the steps the base runs before the refiner takes over, 0 < F < 1 (e.g. 0.8)",
        owner="refiner",
        webui="refiner_switch_at",
    ),
)
_PLACEHOLDER_IMAGE = Image.new("RGB", (8, 8))  # the input of a hires second pass checked before its first pass ran


@dataclass
class Continuation:
    """A request's later pass: its requests, and what makes the request's result from their results."""

    requests: list[GenerationRequest]  # planned and tokenized, ready to batch
    finish: Callable[[Sequence[GenerationResult]], GenerationResult]
    timings: Timings  # of the pass that made it (the batch it ran in)


Outcome = GenerationResult | Continuation


class Workflow:
    """Runs passes and turns each request's pass into its result or its continuation."""

    def __init__(self, runner: Runner, prepare: Callable[[GenerationRequest], GenerationRequest]) -> None:
        self.runner = runner
        self.prepare = prepare  # a pass request made here -> tokenized and planned (the pipeline's)
        self.results = partial(results, networks=runner.network_fields)  # infotexts name the networks that ran

    def run_all(
        self, requests: Sequence[GenerationRequest], progress: Callable[[], Progress]
    ) -> list[GenerationResult]:
        """Every pass of `requests` (equal keys), later passes grouped by key, here and now."""
        outcomes = self.run_pass(requests, progress())
        later = [(i, o) for i, o in enumerate(outcomes) if isinstance(o, Continuation)]
        if later:
            finals = self.run_grouped([r for _, c in later for r in c.requests], progress)
            at = 0
            for i, continuation in later:
                outcomes[i] = continuation.finish(finals[at : at + len(continuation.requests)])
                at += len(continuation.requests)
        return outcomes  # type: ignore[return-value]  # every continuation was finished

    def run_grouped(
        self, requests: Sequence[GenerationRequest], progress: Callable[[], Progress]
    ) -> list[GenerationResult]:
        """Requests of any keys: those with equal keys run as one batch; results in the order given."""
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.plan.key, []).append(i)
        out: list[GenerationResult | None] = [None] * len(requests)
        for members in groups.values():
            for i, result in zip(members, self.run_all([requests[i] for i in members], progress), strict=True):
                out[i] = result
        return out  # type: ignore[return-value]

    def run_pass(self, requests: Sequence[GenerationRequest], progress: Progress) -> list[Outcome]:
        """One pass of a batch; each request gets its result, or (its plan says so) its continuation.

        Requests of one batch share the pass, not what follows it: a hires request's first pass batches with plain
        text-to-image requests, and only its own rows are upscaled.
        """
        out = self.runner.run(requests, progress)
        rows, at = [], 0
        for r in out.requests:
            rows.append(slice(at, at + r.num_images))
            at += r.num_images
        then = [None if progress.stopped else r.plan.then for r in out.requests]  # an interrupt skips later passes
        decoded = [
            t is None or (t in (HIRES, UPSCALE) and not r.hires.latent) for r, t in zip(out.requests, then, strict=True)
        ]
        images: list[list[Image.Image] | None] = [None] * len(out.requests)
        if any(decoded):
            wanted = [i for i, d in enumerate(decoded) if d]
            latents = torch.cat([out.latents[rows[i]] for i in wanted])
            pil = self.runner.decode(out.model, latents, out.clock, out.requests[0].tiling)
            for i in wanted:
                images[i], pil = pil[: out.requests[i].num_images], pil[out.requests[i].num_images :]
        for i, r in enumerate(out.requests):
            if then[i] == UPSCALE:  # upscaled (and decoded) before the batch's time is read
                images[i] = self._upscale(r, out, rows[i], images[i])
        timings = batch_timings(out.clock, out.started, progress.steps - out.requests[0].steps_before)
        outcomes: list[Outcome] = []
        base = self.runner.base
        for i, r in enumerate(out.requests):
            if then[i] is None:
                outcomes.append(self.results([r], images[i], timings, base, out.model)[0])
            elif then[i] == UPSCALE:
                extra = infotext_fields(r.hires, r.steps)
                outcomes.append(self.results([r], images[i], timings, base, out.model, extra=extra, strength=0.0)[0])
            elif then[i] == REFINER:
                outcomes.append(self._refiner(r, out, rows[i], timings))
            else:
                outcomes.append(self._hires(r, out, rows[i], images[i], timings))
        return outcomes

    def _refiner(self, request: GenerationRequest, out: PassOutput, rows: slice, timings) -> Continuation:
        """The refiner's pass from where the base stopped: its latents, its generators, the rest of the schedule."""
        refiner_pass = self.prepare(
            replace(
                request,
                stage="refiner",
                denoising_start=request.refiner_switch_at,
                refiner_switch_at=None,
                image=None,
                mask_image=None,
                strength=None,
                control=(),  # ControlNets steer the base: none exists for the refiner
                init_latents=out.latents[rows],
                generator_states=tuple(g.get_state() for g in out.generators[rows]),
                calls_before=out.calls,
                steps_before=out.progress.steps,
                next_pass=None,
                plan=None,
            )
        )
        base, refiner = self.runner.base, self.runner.models[REFINER]

        def finish(done: Sequence[GenerationResult]) -> GenerationResult:
            (result,) = done
            return self.results([request], result.images, added([timings, result.timings]), base, refiner)[0]

        return Continuation([refiner_pass], finish, timings)

    def _upscale(self, request, out: PassOutput, rows: slice, images) -> list[Image.Image]:
        """A hires fix at strength 0: the first pass's images upscaled, nothing denoised again."""
        hires = request.hires
        factor = out.model.manifest.ranges.latent_factor
        geometry = hires.geometry(request.height, request.width, factor)
        if hires.latent:
            upscaled = upscale_latents(out.latents[rows], hires, geometry, factor)
            return self.runner.decode(out.model, upscaled, out.clock, request.tiling)
        return [upscale_image(image, hires, geometry, factor, self.runner.upscalers) for image in images]

    def _hires(self, request, out: PassOutput, rows: slice, images, timings) -> Continuation:
        """The hires fix's second passes: each image upscaled, then image-to-image as a request of its own (its
        prompt, its seed: fresh generators, as the web UI draws the second pass's noise)."""
        hires = request.hires
        factor = out.model.manifest.ranges.latent_factor
        geometry = hires.geometry(request.height, request.width, factor)
        if hires.latent:
            sources: list = list(upscale_latents(out.latents[rows], hires, geometry, factor).split(1))
        else:
            sources = [upscale_image(image, hires, geometry, factor, self.runner.upscalers) for image in images]
        passes = [self.prepare(second_pass(request, factor, i, source)) for i, source in enumerate(sources)]
        base = self.runner.base

        def finish(done: Sequence[GenerationResult]) -> GenerationResult:
            unique = {id(r.timings): r.timings for r in done}  # a batch's passes share one Timings
            images = [r.images[0] for r in done]
            extra = infotext_fields(hires, request.steps)
            total = added([timings, *unique.values()])
            return self.results([request], images, total, base, base, extra=extra, strength=hires.strength)[0]

        return Continuation(passes, finish, timings)


def second_pass(
    request: GenerationRequest,
    factor: int,
    index: int | None = None,
    source: torch.Tensor | Image.Image | None = None,
    latent_channels: int = 4,
) -> GenerationRequest:
    """The hires fix's second pass: image-to-image at the target size, from upscaled latents or an image.

    With `index`, the pass of the request's image `index` alone (its prompt and seed) from `source`; without,
    the whole request's, from a placeholder of the right shape (for checks before the first pass runs).
    """
    hires = request.hires
    assert hires is not None  # callers check
    height, width = hires.geometry(request.height, request.width, factor).size
    prompts, negatives, scales = request.prompts, request.negative_prompts, request.guidance_scales
    count, seed = request.num_images_per_prompt, request.seed
    if index is not None:
        at = index // request.num_images_per_prompt
        prompts, negatives, scales = prompts[at : at + 1], negatives[at : at + 1], scales[at : at + 1]
        count, seed = 1, request.seed + index
    if hires.prompt is not None:
        prompts = (hires.prompt,) * len(prompts)
    if hires.negative_prompt is not None:
        negatives = (hires.negative_prompt,) * len(negatives)
    image = latents = None
    if isinstance(source, Image.Image):
        image = source
    elif source is not None:
        latents = source
    elif hires.latent:  # the placeholder: a tensor with a shape and no data
        latents = torch.empty((count * len(prompts), latent_channels, height // factor, width // factor), device="meta")
    else:
        image = _PLACEHOLDER_IMAGE
    return replace(
        request,
        prompts=prompts,
        negative_prompts=negatives,
        guidance_scales=scales,
        num_images_per_prompt=count,
        seed=seed,
        height=height,
        width=width,
        steps=hires.steps or request.steps,
        scheduler=hires.sampler or request.scheduler,
        strength=hires.strength,
        image=image,
        init_latents=latents,
        control=tuple(u for u in (unit.in_pass(hires_pass=True) for unit in request.control) if u is not None),
        hires=None,
        tokens={},
        next_pass=None,
        plan=None,
    )
