"""DeepCache matches the authors' own code: their `DeepCacheSDHelper` (PyPI DeepCache 0.1.1) on diffusers' pipelines.

The helper wraps a diffusers UNet's blocks and replays their cached outputs on the steps it skips; sdrt runs two
networks instead (`sdrt.deep_cache_unet`). Same weights, seed, sampler and settings: images within 2/255.
"""

from __future__ import annotations

import pytest
import torch

from sdrt.deep_cache_unet import FEATURE, DeepCacheUNetModule, branch_of, branches, deep_cache_specs
from sdrt.runtime.deep_cache import DeepCache, parse_cli
from tests.conftest import RANGES
from tests.runtime.compare import HEIGHT, STEPS, WIDTH, assert_images_close
from tests.runtime.deep_cache_reference import NEGATIVE, PROMPT, SIZE, helper_module, with_helper


@pytest.fixture(scope="module")
def torch_pipes(demo_model, sdxl_model):
    from sdrt import Pipeline

    return {
        "sd1": Pipeline.load(demo_model, backend="torch", ranges=RANGES),
        "sdxl": Pipeline.load(sdxl_model, backend="torch", ranges=RANGES),
    }


@pytest.fixture(scope="module")
def sdxl_reference(sdxl_model):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.original_scheduler = pipe.scheduler
    return pipe


def _unet_inputs(unet, batch: int, height: int, width: int, seed: int):
    from sdrt.components import residual_specs, unet_spec
    from sdrt.spec import TensorSpec

    config = dict(unet.config)
    g = torch.Generator().manual_seed(seed)
    added = {}
    if config.get("addition_embed_type") == "text_time":
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        added = {"text_embeds": torch.randn(batch, pooled, generator=g), "time_ids": torch.rand(batch, 6) * 512}
    residuals = residual_specs(config)
    values = {"cfg_batch": batch, "latent_height": height, "latent_width": width}
    control = [torch.randn(s.concrete(values), generator=g) * 0.5 for s in residuals]
    spec = unet_spec(
        config["in_channels"], config["out_channels"], config["cross_attention_dim"], 1000,
        added_cond=[TensorSpec(k, "float32", ("cfg_batch", v.shape[1])) for k, v in added.items()],
        residuals=residuals,
    )  # fmt: skip
    states = torch.randn(batch, 7, config["cross_attention_dim"], generator=g)
    common = {"encoder_hidden_states": states, **added, **{s.name: c for s, c in zip(residuals, control, strict=True)}}
    samples = [torch.randn(batch, config["in_channels"], height, width, generator=g) for _ in range(2)]
    return spec, config, common, samples, control


@pytest.mark.parametrize("variant", ["sd1", "sdxl"])
def test_every_branch_matches_the_helpers_full_and_skipped_step(demo_model, sdxl_model, variant):
    """Both networks against the helper's wrapped UNet, every branch id, with ControlNet residuals, latents 9x13
    (not divisible by the UNet's downsampling): a full step, then a skipped step on other latents and timestep."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained((demo_model if variant == "sd1" else sdxl_model) / "unet").eval()
    spec, config, common, (x1, x2), control = _unet_inputs(unet, 2, 9, 13, seed=3)
    pipe = type("Pipe", (), {})()
    pipe.unet, pipe.scheduler = unet, type("Scheduler", (), {"timesteps": torch.tensor([901.0, 401.0])})()
    diffusers_kwargs = {
        "encoder_hidden_states": common["encoder_hidden_states"],
        "added_cond_kwargs": {k: common[k] for k in ("text_embeds", "time_ids") if k in common} or None,
        "down_block_additional_residuals": tuple(control[:-1]),
        "mid_block_additional_residual": control[-1],
    }
    for branch in range(branches(config)):
        full_spec, shallow_spec = deep_cache_specs(spec, config, branch)
        full, shallow = DeepCacheUNetModule(unet, full_spec, config), DeepCacheUNetModule(unet, shallow_spec, config)
        helper = helper_module.DeepCacheSDHelper(pipe=pipe)
        helper.set_params(cache_interval=2, cache_branch_id=branch)
        with torch.no_grad():
            plain = unet(x2, torch.full((2,), 401.0), **diffusers_kwargs).sample
            helper.enable()
            try:
                want_full = unet(x1, torch.tensor(901.0), **diffusers_kwargs).sample
                want_skipped = unet(x2, torch.tensor(401.0), **diffusers_kwargs).sample
            finally:
                helper.disable()
            got_full, feature = full(sample=x1, timestep=torch.full((2,), 901.0), **common)
            feeds = {"sample": x2, "timestep": torch.full((2,), 401.0), **common, FEATURE: feature}
            got_skipped = shallow(**{n: feeds[n] for n in shallow_spec.input_names})
        assert torch.allclose(got_full, want_full, atol=1e-5), branch
        assert torch.allclose(got_skipped, want_skipped, atol=1e-5), branch
        assert (got_skipped - plain).abs().max() > 1e-3, "a skipped step that equals the full UNet proves nothing"


def test_branch_geometry_and_bad_ids(demo_model):
    from diffusers import UNet2DConditionModel

    config = dict(UNet2DConditionModel.load_config(demo_model / "unet"))  # 4 blocks, 1 layer per block
    assert branches(config) == 12
    zero, one, last = branch_of(config, 0), branch_of(config, 1), branch_of(config, 11)
    assert (zero.down_layers, zero.up_first, zero.residuals) == (0, 1, (0,))
    assert (one.down_layers, one.up_first, one.residuals) == (1, 0, (0, 1))
    assert last.from_mid and last.feature_channels == config["block_out_channels"][-1]
    with pytest.raises(ValueError, match=r"deep_cache branch 12 is outside 0\.\.11"):
        branch_of(config, 12)


def test_full_steps_count_as_the_helper_does():
    dc = DeepCache(interval=2)
    ddim = torch.tensor([900, 700, 500, 300, 100])
    assert dc.full_steps(ddim, ddim) == (True, False, True, False, True)
    assert dc.full_steps(ddim, ddim[1:]) == (True, False, True, False)  # img2img: from the first step that runs
    heun = torch.tensor([900, 700, 700, 500, 500, 300, 300])  # a timestep's two calls count as its first index
    assert dc.full_steps(heun, heun) == (True, False, False, False, False, False, False)
    assert DeepCache(interval=3).full_steps(heun, heun) == (True, False, False, True, True, False, False)


def test_the_parameter_on_every_front_end():
    from sdrt.runtime.params import all_params

    assert parse_cli("3") == DeepCache(3, 0) and parse_cli("5:1") == DeepCache(5, 1)
    for bad in ("", "3:1:2", "x", "0"):
        with pytest.raises(ValueError):
            parse_cli(bad)
    with pytest.raises(ValueError, match="deep_cache interval True is not an integer"):
        DeepCache(interval=True)
    param = all_params()["deep_cache"]
    assert param.cli_flag == "--deep-cache" and param.build({"interval": 2, "branch": 1}) == DeepCache(2, 1)
    from sdrt.cli import _param_values, _parser
    from sdrt.serve.fields import body_model

    args = _parser().parse_args(["generate", "artifact", "a cat", "--deep-cache", "3:1"])
    assert _param_values(args, all_params())["deep_cache"] == DeepCache(3, 1)
    assert "deep_cache" in body_model("Body", all_params(), "a body").model_fields  # the native API's field


@pytest.mark.parametrize("interval", [2, 3])
@pytest.mark.parametrize("branch", [0, 1])
def test_sd1_matches_the_helper(torch_pipes, diffusers_pipe, interval, branch):
    ours = torch_pipes["sd1"].generate(
        PROMPT, negative_prompt=NEGATIVE, **SIZE, num_inference_steps=STEPS, seed=4, scheduler="dpmpp_2m",
        deep_cache=DeepCache(interval, branch),
    )  # fmt: skip
    theirs = with_helper(
        diffusers_pipe, interval, branch, "dpmpp_2m", 4, prompt=PROMPT, negative_prompt=NEGATIVE, **SIZE,
        num_inference_steps=STEPS,
    )  # fmt: skip
    assert_images_close(ours.images, theirs)


@pytest.mark.parametrize("interval", [2, 3])
@pytest.mark.parametrize("branch", [0, 1])
def test_sdxl_matches_the_helper(torch_pipes, sdxl_reference, interval, branch):
    ours = torch_pipes["sdxl"].generate(
        PROMPT, **SIZE, num_inference_steps=STEPS, seed=5, scheduler="euler_a", deep_cache=DeepCache(interval, branch)
    )
    theirs = with_helper(
        sdxl_reference, interval, branch, "euler_a", 5, prompt=PROMPT, **SIZE, num_inference_steps=STEPS,
        guidance_scale=5.0,
    )  # fmt: skip
    assert_images_close(ours.images, theirs)


def test_second_order_sampler_and_img2img_count_as_the_helper(torch_pipes, diffusers_pipe):
    from diffusers import StableDiffusionImg2ImgPipeline

    ours = torch_pipes["sd1"].generate(
        PROMPT, **SIZE, num_inference_steps=STEPS, seed=6, scheduler="heun", deep_cache=DeepCache(3, 1)
    )
    theirs = with_helper(diffusers_pipe, 3, 1, "heun", 6, prompt=PROMPT, **SIZE, num_inference_steps=STEPS)
    assert_images_close(ours.images, theirs)
    img2img = StableDiffusionImg2ImgPipeline(**diffusers_pipe.components)
    img2img.set_progress_bar_config(disable=True)
    img2img.original_scheduler = diffusers_pipe.original_scheduler
    image = ours.images[0]
    ours = torch_pipes["sd1"].generate(
        PROMPT, image=image, strength=0.7, num_inference_steps=8, seed=7, scheduler="ddim", deep_cache=DeepCache(2, 0)
    )
    theirs = with_helper(img2img, 2, 0, "ddim", 7, prompt=PROMPT, image=image, strength=0.7, num_inference_steps=8)
    assert_images_close(ours.images, theirs)


def test_controlnet_residuals_on_shallow_steps(torch_pipes, diffusers_pipe, controlnet_models):
    """The shallow step still adds the residuals its skip connections take (the helper adds all; the rest are
    cached away)."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
    from PIL import Image

    from sdrt import Control

    hint = Image.effect_noise((WIDTH, HEIGHT), 80).convert("RGB")
    path = controlnet_models["tiny_canny"]
    ours = torch_pipes["sd1"].generate(
        PROMPT, **SIZE, num_inference_steps=STEPS, seed=8, scheduler="euler",
        control=[Control(model=str(path), image=hint, scale=0.8)], deep_cache=DeepCache(2, 1),
    )  # fmt: skip
    reference = StableDiffusionControlNetPipeline(
        **diffusers_pipe.components, controlnet=ControlNetModel.from_pretrained(path)
    )
    reference.set_progress_bar_config(disable=True)
    reference.original_scheduler = diffusers_pipe.original_scheduler
    theirs = with_helper(
        reference, 2, 1, "euler", 8, prompt=PROMPT, image=hint, **SIZE, num_inference_steps=STEPS,
        controlnet_conditioning_scale=0.8,
    )  # fmt: skip
    assert_images_close(ours.images, theirs)


def test_requests_with_different_settings_batch_apart_and_keep_their_solo_images(torch_pipes):
    pipe = torch_pipes["sd1"]
    plain, two, three = (
        pipe.request(PROMPT, **SIZE, num_inference_steps=STEPS, seed=9, deep_cache=dc)
        for dc in (None, DeepCache(2, 0), DeepCache(3, 0))
    )
    assert len({plain.plan.key, two.plan.key, three.plan.key}) == 3  # the batcher never puts them in one batch
    with pytest.raises(ValueError, match="equal batch_key"):
        pipe.run_batch([plain, two])
    other = pipe.request("a castle", **SIZE, num_inference_steps=STEPS, seed=11, deep_cache=DeepCache(2, 0))
    together = pipe.run_batch([two, other])  # one UNet batch of 4 rows, full and shallow steps shared
    for request, result in zip((two, other), together, strict=True):
        assert_images_close(result.images, pipe.run_batch([request])[0].images, bound=0)
    exact = pipe.run_batch([plain])[0]  # off: the exact images, as without the parameter
    assert_images_close(exact.images, pipe.generate(PROMPT, **SIZE, num_inference_steps=STEPS, seed=9).images, 0)
    assert (np_image(exact) != np_image(together[0])).any()
    with pytest.raises(ValueError, match="deep_cache: deep_cache branch 40 is outside"):
        pipe.request(PROMPT, **SIZE, deep_cache={"interval": 2, "branch": 40})


def np_image(result):
    import numpy as np

    return np.asarray(result.images[0])


def test_a_server_batch_with_and_without_deep_cache_gives_solo_images(torch_pipes):
    """Requests with and without DeepCache submitted together to the server's batcher: each setting batches apart
    (its plan's key), requests of one setting share a batch, and every image is the request's solo image."""
    import asyncio

    from sdrt.serve.batcher import Batcher

    pipe = torch_pipes["sd1"]
    settings = (None, DeepCache(2, 0), None, DeepCache(2, 0), DeepCache(3, 1))
    requests = [
        pipe.request(PROMPT if i % 2 else "a castle", **SIZE, num_inference_steps=STEPS, seed=20 + i, deep_cache=dc)
        for i, dc in enumerate(settings)
    ]
    batches: list[list[int]] = []

    def run_pass(batch):
        batches.append([requests.index(r) for r in batch])
        return pipe.run_pass(batch)

    async def serve():
        batcher = Batcher(run_pass, max_images=4, max_wait=0.5, max_queue=16)
        await batcher.start()
        jobs = [batcher.submit(r, r.plan.key) for r in requests]
        results = await asyncio.gather(*(job.future for job in jobs))
        await batcher.drain()
        return [job.result for job in results]

    served = asyncio.run(serve())
    assert sorted(sorted(b) for b in batches) == [[0, 2], [1, 3], [4]]  # one batch per setting
    # within the batching bound of tests/runtime/test_batching.py: a batch of 4 UNet rows against 2 changes float
    # rounding in the kernels, not what is computed
    for request, result in zip(requests, served, strict=True):
        assert_images_close(result.images, pipe.run_batch([request])[0].images)
