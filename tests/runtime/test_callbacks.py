"""Step callbacks and previews: the loop reports step, timestep and latents without changing the image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdrt.cli import main


def test_callback_sees_every_nth_step_and_the_image_is_unchanged(pipelines):
    pipe = pipelines["onnxruntime"]
    seen = []

    def callback(step: int, timestep: torch.Tensor, latents: torch.Tensor) -> None:
        seen.append((step, float(timestep), tuple(latents.shape), latents.clone()))

    kwargs = dict(height=64, width=96, num_inference_steps=6, seed=2, scheduler="euler")
    with_callback = pipe.generate(["a cat", "a dog"], callback=callback, callback_steps=2, **kwargs)
    plain = pipe.generate(["a cat", "a dog"], **kwargs)
    assert [s[0] for s in seen] == [0, 2, 4]
    assert all(shape == (2, 4, 8, 12) for _, _, shape, _ in seen)
    timesteps = [t for _, t, _, _ in seen]
    assert timesteps == sorted(timesteps, reverse=True)
    assert not torch.equal(seen[0][3], seen[-1][3])  # the latents move from step to step
    for a, b in zip(with_callback.images, plain.images, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_callback_steps_must_be_positive(pipelines):
    with pytest.raises(ValueError, match=r"callback_steps 0 is not a positive integer"):
        pipelines["onnxruntime"].generate(
            "a cat", height=64, width=64, num_inference_steps=2, seed=0, callback=print, callback_steps=0
        )


def test_cli_writes_previews_every_n_steps(artifact, tmp_path):
    out = tmp_path / "cat.png"
    code = main([
        "generate", str(artifact), "a cat", "--steps", "4", "--height", "64", "--width", "64", "--seed", "1",
        "--scheduler", "Euler",
        "--preview-every", "2", "--preview-dir", str(tmp_path / "previews"), "-o", str(out),
    ])  # fmt: skip
    assert code == 0 and out.is_file()
    previews = sorted(p.name for p in (tmp_path / "previews").iterdir())
    assert len(previews) == 2 and all(p.endswith(".png") for p in previews), previews


@pytest.mark.parametrize("scheduler", ["pndm", "heun", "euler"])
def test_the_step_count_is_the_steps_asked_for(pipelines, scheduler):
    # PLMS runs its first timestep twice (11 UNet calls for 10 steps) and Heun two calls a step: the progress
    # counts steps as diffusers' pipelines do, so the bar and the callbacks see the steps the user asked for
    seen = []
    pipelines["onnxruntime"].generate(
        "a cat", height=64, width=64, num_inference_steps=4, seed=0, scheduler=scheduler,
        callback=lambda step, t, latents: seen.append(step),
    )  # fmt: skip
    assert seen == [0, 1, 2, 3]
