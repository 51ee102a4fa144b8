"""DeepCache's two networks trace to ONNX with dynamic shapes and run on onnxruntime as in torch.

This checks the graphs only: `sdrt export --deep-cache`, the manifest entries and the ONNX Runtime/OpenVINO/
TensorRT engines that would load them are not written yet (see the DeepCache note), so no runtime parity here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdrt.deep_cache_unet import FEATURE, DeepCacheUNetModule, deep_cache_specs
from sdrt.export.onnx_export import export_component
from tests.conftest import RANGES
from tests.runtime.test_deep_cache import _unet_inputs


@pytest.mark.parametrize("branch", [0, 1])
def test_full_and_shallow_graphs_match_torch_at_two_sizes(demo_model, tmp_path, branch):
    import onnxruntime as ort
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(demo_model / "unet").eval()
    spec, config, _, _, _ = _unet_inputs(unet, 2, 9, 13, seed=0)
    full_spec, shallow_spec = deep_cache_specs(spec, config, branch)
    sessions = {}
    for part in (full_spec, shallow_spec):
        module = DeepCacheUNetModule(unet, part, config)
        export_component(module, part, RANGES, tmp_path / part.name)
        sessions[part.name] = ort.InferenceSession(str(tmp_path / part.name / "model.onnx"))
    for height, width in ((9, 13), (16, 12)):
        _, _, common, (x1, x2), _ = _unet_inputs(unet, 2, height, width, seed=height)
        full_feeds = {"sample": x1, "timestep": torch.full((2,), 801.0), **common}
        with torch.no_grad():
            want_pred, want_feature = DeepCacheUNetModule(unet, full_spec, config)(**full_feeds)
        got_pred, got_feature = sessions[full_spec.name].run(None, {k: v.numpy() for k, v in full_feeds.items()})
        np.testing.assert_allclose(got_pred, want_pred.numpy(), atol=1e-4)
        np.testing.assert_allclose(got_feature, want_feature.numpy(), atol=1e-4)
        feeds = {"sample": x2, "timestep": torch.full((2,), 601.0), **common, FEATURE: want_feature}
        shallow_feeds = {n: feeds[n] for n in shallow_spec.input_names}
        with torch.no_grad():
            want = DeepCacheUNetModule(unet, shallow_spec, config)(**shallow_feeds)
        (got,) = sessions[shallow_spec.name].run(None, {k: v.numpy() for k, v in shallow_feeds.items()})
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4)
