"""Samplers on the artifact's scheduler config as diffusers computes them: the same timesteps (exactly), sigmas and
initial sigma (to float32 rounding), the same web UI labels, for every sampler sdrt-cpp runs and the model's own."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdrt.schedulers import make_scheduler, sampler_label

SAMPLERS = ["", "ddim", "pndm", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras"]
STEPS = [1, 3, 7, 20, 30, 50]
# the training betas are float32 from torch.linspace, whose vectorized lanes round a last bit differently from the
# scalar formula the C++ uses: sigmas (from their cumulative product), and the fractional timesteps Euler's Karras
# sigmas map back to, agree to about 2e-7 relative
SIGMA_RTOL = 1e-6

SD15 = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
}
CONFIGS = {
    "sd15_pndm": SD15,
    "euler_linspace": {**SD15, "_class_name": "EulerDiscreteScheduler", "timestep_spacing": "linspace"},
    "euler_trailing_v": {
        **SD15,
        "_class_name": "EulerDiscreteScheduler",
        "timestep_spacing": "trailing",
        "prediction_type": "v_prediction",
    },
    "euler_own_karras": {**SD15, "_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": True},
    "sd2_ddim_v": {**SD15, "_class_name": "DDIMScheduler", "clip_sample": False, "prediction_type": "v_prediction"},
    "dpm_own_karras": {**SD15, "_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": True},
    "euler_ancestral": {**SD15, "_class_name": "EulerAncestralDiscreteScheduler"},
    "linear_betas": {**SD15, "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
    "cosine_betas": {**SD15, "beta_schedule": "squaredcos_cap_v2"},
}


def test_schedules_equal_diffusers(cpp_tools, tmp_path):
    cases = []
    for name, config in CONFIGS.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(config))
        cases += [(name, str(path), sampler, steps) for sampler in SAMPLERS for steps in STEPS]
    results = cpp_tools.inspect_json("schedule", stdin=[[path, s, n] for _, path, s, n in cases])
    for (name, _, sampler, steps), got in zip(cases, results, strict=True):
        where = f"{name}, sampler {sampler or '(own)'}, {steps} steps"
        assert "error" not in got, f"{where}: {got.get('error')}"
        reference = make_scheduler(sampler or None, CONFIGS[name])
        reference.set_timesteps(steps)
        expected = reference.timesteps.numpy().astype(np.float64)
        if np.array_equal(expected, np.round(expected)):  # grid timesteps: exactly
            assert np.array_equal(np.asarray(got["timesteps"]), expected), where
        else:  # Karras sigmas mapped back to fractional timesteps: through the same float32 sigmas
            np.testing.assert_allclose(got["timesteps"], expected, rtol=SIGMA_RTOL, err_msg=where)
        if got["sigmas"]:
            np.testing.assert_allclose(got["sigmas"], np.asarray(reference.sigmas), rtol=SIGMA_RTOL, err_msg=where)
        assert got["init_noise_sigma"] == pytest.approx(float(reference.init_noise_sigma), rel=SIGMA_RTOL), where
        assert got["label"] == sampler_label(sampler or None, CONFIGS[name]), where


@pytest.mark.parametrize(
    ("config", "sampler", "message"),
    [
        ({**SD15, "_class_name": "LMSDiscreteScheduler"}, "", "'LMSDiscreteScheduler' (with its config) is not one"),
        (SD15, "lms", "unknown sampler 'lms'; known: ddim, pndm, euler, euler_a, dpmpp_2m, dpmpp_2m_karras"),
        ({**SD15, "_class_name": "PNDMScheduler", "skip_prk_steps": False}, "", "is not one sdrt-cpp runs"),
        ({**SD15, "rescale_betas_zero_snr": True}, "euler", "rescale_betas_zero_snr"),
        (
            {**SD15, "_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++"},
            "",
            "sde-dpmsolver++",
        ),
    ],
)
def test_unsupported_configs_are_refused_by_name(cpp_tools, tmp_path, config, sampler, message):
    path = tmp_path / "scheduler_config.json"
    path.write_text(json.dumps(config))
    (got,) = cpp_tools.inspect_json("schedule", stdin=[[str(path), sampler, 10]])
    assert message in got.get("error", "")
