"""The SD 2.x prediction-type probe: the demo SD 2.x UNet trained briefly to predict v, and its twin (the same
start) trained to predict epsilon, are told apart through a single file's conversion; random weights are not
decided; an undecided file asks for --prediction-type.

The twins learn on clean latents of mean 1 and unit variance at the high timesteps the probe reads (900-999).
The web UI's offset rule needs a v UNet's clean-latent guess at pure noise to average above about 0.5: it holds
here by that choice of latents, and on real checkpoints by the web UI's use of the rule (which cannot be checked
without real weights).
"""

from __future__ import annotations

import copy

import pytest
import torch

from sdrt.single_file.checkpoint import plan
from sdrt.single_file.prediction import probe_checkpoint, probe_unet
from tests.single_file.original_layout import unet_key
from tests.single_file.test_checkpoint import _published_checkpoint

TRAIN_STEPS = 150


def _alphas_cumprod(config) -> torch.Tensor:
    """The demo scheduler's alpha_bar (scaled_linear betas)."""
    betas = torch.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, config["num_train_timesteps"]) ** 2
    return torch.cumprod(1 - betas, 0)


def _train(unet, target: str, alphas_cumprod: torch.Tensor):
    """A copy of `unet` trained for TRAIN_STEPS to predict `target` ("epsilon" or "v_prediction")."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only contend on a busy machine
    try:
        return _steps(copy.deepcopy(unet).train(), target, alphas_cumprod)
    finally:
        torch.set_num_threads(threads)


def _steps(unet, target: str, alphas_cumprod: torch.Tensor):
    optimizer = torch.optim.Adam(unet.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    shape, width = (8, unet.config.in_channels, 8, 8), unet.config.cross_attention_dim
    for _ in range(TRAIN_STEPS):
        x0, noise = 1 + torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        t = torch.randint(900, 1000, (shape[0],), generator=g)
        ab = alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        wanted = noise if target == "epsilon" else ab.sqrt() * noise - (1 - ab).sqrt() * x0
        out = unet(noisy, t, encoder_hidden_states=torch.randn(shape[0], 2, width, generator=g)).sample
        loss = torch.nn.functional.mse_loss(out, wanted)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return unet.eval()


@pytest.fixture(scope="module")
def demo_unet(sd2_model):
    import json

    from diffusers import UNet2DConditionModel

    config = json.loads((sd2_model / "scheduler" / "scheduler_config.json").read_text())
    return UNet2DConditionModel.from_pretrained(sd2_model / "unet"), _alphas_cumprod(config)


def test_random_weights_are_not_decided(demo_unet):
    unet, _ = demo_unet
    probe = probe_unet(unet, unet.config.cross_attention_dim)
    assert probe.prediction_type is None, probe.describe()


@pytest.mark.parametrize("target", ["v_prediction", "epsilon"])
def test_a_trained_unet_is_found_through_the_single_files_conversion(demo_unet, target):
    unet, alphas_cumprod = demo_unet
    trained = _train(unet, target, alphas_cumprod)
    config = dict(trained.config)
    checkpoint = {"model.diffusion_model." + unet_key(k, config): v for k, v in trained.state_dict().items()}
    probe = probe_checkpoint(checkpoint, config)
    assert probe.prediction_type == target, probe.describe()


def test_a_file_that_cannot_be_probed_asks_for_the_prediction_type():
    checkpoint = _published_checkpoint("sd21_768_v")  # names and shapes on the meta device: nothing to run
    with pytest.raises(ValueError, match=r"--prediction-type.*could not be probed \(its UNet weights hold no data"):
        plan(checkpoint)
    assert plan(checkpoint, "v_prediction").configs["scheduler"]["prediction_type"] == "v_prediction"  # no probe
