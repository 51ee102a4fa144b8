"""DeepCache's two networks trace to ONNX with dynamic shapes and run on onnxruntime as in torch; `sdrt export
--deep-cache` records them in the manifest, their weights written once for every graph (ONNX external data shared
by offset). Runtime parity on ONNX Runtime and OpenVINO: tests/runtime/test_deep_cache_engines.py.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch

from sdrt.deep_cache_unet import FEATURE, DeepCacheUNetModule, deep_cache_specs
from sdrt.export import ExportConfig, export_model
from sdrt.manifest import Manifest, read_manifest
from sdrt.onnx_files import tensor_bytes
from tests.conftest import RANGES
from tests.export.test_fp16 import MAX_BOUND, RMS_BOUND, _errors
from tests.runtime.test_deep_cache import _unet_inputs


@pytest.mark.parametrize("branch", [0, 1])
def test_full_and_shallow_graphs_match_torch_at_two_sizes(demo_model, deep_cache_artifacts, branch):
    """The exported graphs (`sdrt export --deep-cache 0,1`) compute what the torch networks do, at two latent sizes."""
    import onnxruntime as ort
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(demo_model / "unet").eval()
    spec, config, _, _, _ = _unet_inputs(unet, 2, 9, 13, seed=0)
    full_spec, shallow_spec = deep_cache_specs(spec, config, branch)
    root = deep_cache_artifacts["sd1"]
    files = read_manifest(root).deep_cache_files
    sessions = {p.name: ort.InferenceSession(str(root / files[p.name].path)) for p in (full_spec, shallow_spec)}
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


def _external(path) -> dict[str, tuple[int, int]]:
    """Tensor name -> (offset, length) in the external-data file, for each external tensor of the graph at `path`."""
    graph = onnx.load(str(path), load_external_data=False).graph
    found = {}
    for tensor in graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in tensor.external_data}
            found[tensor.name] = (int(info["offset"]), int(info["length"]))
    return found


@pytest.mark.parametrize("variant", ["sd1", "sdxl"])
def test_export_records_the_branches_and_writes_the_weights_once(deep_cache_artifacts, variant):
    import onnxruntime as ort

    root = deep_cache_artifacts[variant]
    manifest = read_manifest(root)
    assert manifest.deep_cache_branches == (0, 1)
    assert sorted(manifest.deep_cache) == sorted(
        f"unet_deep_cache_{part}_{b}" for b in (0, 1) for part in ("full", "shallow")
    )
    data = {f.external_data for f in manifest.deep_cache_files.values()}
    assert data == {"unet_deep_cache/weights.onnx.data"}  # one file for the four graphs
    graphs = {}
    for name, spec in manifest.deep_cache.items():
        path = root / manifest.deep_cache_files[name].path
        session = ort.InferenceSession(str(path))  # reads its weights at offsets in the shared file
        assert [i.name for i in session.get_inputs()] == spec.input_names, name  # the graph takes what its spec says
        assert [o.name for o in session.get_outputs()] == spec.output_names, name
        graphs[name] = _external(path)
    for b in (0, 1):  # the shallow graph's weights are the full one's bytes, not a copy
        full, shallow = graphs[f"unet_deep_cache_full_{b}"], graphs[f"unet_deep_cache_shallow_{b}"]
        assert shallow and set(shallow.values()) <= set(full.values())
    assert set(graphs["unet_deep_cache_full_0"].values()) == set(graphs["unet_deep_cache_full_1"].values())
    # on disk: about one UNet's weights, where four separate graphs would hold about two and a bit
    referenced = sum(length for g in graphs.values() for _, length in g.values())
    stored = (root / "unet_deep_cache" / "weights.onnx.data").stat().st_size
    unet = onnx.load(str(root / manifest.files["unet"].path), load_external_data=False).graph
    unet_weights = sum(tensor_bytes(t) for t in unet.initializer if tensor_bytes(t) >= 1024)
    assert stored <= 1.02 * unet_weights and referenced > 2 * unet_weights, (stored, referenced, unet_weights)


def test_manifest_round_trip_and_refusals(deep_cache_artifacts, artifact):
    data = json.loads((deep_cache_artifacts["sd1"] / "manifest.json").read_text())
    manifest = Manifest.from_json(data)
    assert Manifest.from_json(manifest.to_json()) == manifest
    shallow = manifest.deep_cache["unet_deep_cache_shallow_1"]
    assert shallow.attributes["deep_cache_branch"] == 1 and shallow.attributes["deep_cache_part"] == "shallow"
    assert [t.shape for t in shallow.inputs if t.name == FEATURE] == [
        ("cfg_batch", 32, "latent_height", "latent_width")  # block 0's size: the up block before upsampled it
    ]
    plain = read_manifest(artifact)  # exported without --deep-cache: no member, nothing to run
    assert "deep_cache" not in json.loads((artifact / "manifest.json").read_text()) and plain.deep_cache_branches == ()
    with pytest.raises(ValueError, match=r"no DeepCache graphs for branch 0 \(it has: none\); export it again with "
                       "sdrt export --deep-cache 0"):  # fmt: skip
        plain.deep_cache_networks(0)
    lone = {**data, "deep_cache": {k: v for k, v in data["deep_cache"].items() if k != "unet_deep_cache_shallow_0"}}
    with pytest.raises(ValueError, match="DeepCache branch 0 without its shallow network"):
        Manifest.from_json(lone)
    renamed = json.loads(json.dumps(data))
    renamed["deep_cache"]["unet_deep_cache_full_0"]["attributes"]["deep_cache_branch"] = 1
    with pytest.raises(ValueError, match="unet_deep_cache_full_0 is not named unet_deep_cache_full_1"):
        Manifest.from_json(renamed)


def test_a_branch_outside_the_unet_is_refused_before_any_work(demo_model, tmp_path):
    config = ExportConfig(max_batch=1, min_size=64, max_size=128, opt_size=64, deep_cache=(1, 12))
    with pytest.raises(ValueError, match=r"--deep-cache \(ExportConfig.deep_cache\): deep_cache branch 12 is outside "
                       r"0\.\.11 for this UNet"):  # fmt: skip
        export_model(demo_model, tmp_path / "out", config)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("branches", "message"),
    [((-1,), "deep_cache branch -1 is not a branch id"), ((True,), "deep_cache branch True is not a branch id"),
     ((1, 0, 1), r"deep_cache \[1, 0, 1\] names a branch twice")],
)  # fmt: skip
def test_bad_branch_ids_in_the_config(branches, message):
    with pytest.raises(ValueError, match=message):
        ExportConfig(deep_cache=branches)
    assert ExportConfig(deep_cache=(3, 0)).deep_cache == (0, 3)


def test_the_cli_flag(tmp_path):
    from sdrt.cli import _parser

    assert _parser().parse_args(["export", "m", "-o", "a", "--deep-cache", "0,1"]).deep_cache == (0, 1)
    assert _parser().parse_args(["export", "m", "-o", "a"]).deep_cache == ()
    with pytest.raises(SystemExit):
        _parser().parse_args(["export", "m", "-o", "a", "--deep-cache", "0,x"])


def test_tensorrt_profiles_cover_the_feature_at_every_size(deep_cache_artifacts):
    """The shallow network's profile gives the cached feature its range from the latents' (TensorRT needs no GPU to
    say which shapes an engine will take)."""
    from sdrt.engines.tensorrt_profiles import build_profiles

    manifest = read_manifest(deep_cache_artifacts["sdxl"])
    networks = manifest.deep_cache_networks(1)
    full, shallow = networks.components.values()
    dims = manifest.ranges.dims()
    static, dynamic = build_profiles(shallow, manifest.ranges)
    spec = next(t for t in shallow.inputs if t.name == FEATURE)
    h, w = dims["latent_height"], dims["latent_width"]
    divisor = int(str(spec.shape[2]).split("/")[1]) if "/" in str(spec.shape[2]) else 1
    low, opt, high = dynamic.shapes(shallow)[FEATURE]
    assert low[2:] == (-(-h.min // divisor), -(-w.min // divisor)) and high[2:] == (
        -(-h.max // divisor),
        -(-w.max // divisor),
    )
    assert static.shapes(shallow)[FEATURE][0] == opt and low[0] == dims["cfg_batch"].min
    assert [p.kind for p in build_profiles(full, manifest.ranges)] == ["static", "dynamic"]


def test_fp16_graphs_share_their_weights_too(demo_model, tmp_path):
    """An fp16 export converts each graph, then writes the converted weights once (ONNX Runtime runs them)."""
    import onnxruntime as ort
    from diffusers import UNet2DConditionModel

    from sdrt.export.exporter import export_deep_cache

    unet = UNet2DConditionModel.from_pretrained(demo_model / "unet").eval()
    spec, config, common, (x1, _), _ = _unet_inputs(unet, 2, 9, 13, seed=1)
    spec = replace(spec, attributes={**spec.attributes, "precision": "fp16"})
    specs, files = export_deep_cache(unet, spec, config, (1,), RANGES, tmp_path, ExportConfig(precision="fp16"))
    full = onnx.load(str(tmp_path / files["unet_deep_cache_full_1"].path), load_external_data=False).graph
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in full.initializer)
    shallow = _external(tmp_path / files["unet_deep_cache_shallow_1"].path)
    assert shallow and set(shallow.values()) <= set(_external(tmp_path / files["unet_deep_cache_full_1"].path).values())
    feeds = {"sample": x1.numpy(), "timestep": np.full((2,), 801.0, np.float32),
             **{k: v.numpy() for k, v in common.items()}}  # fmt: skip
    session = ort.InferenceSession(str(tmp_path / files["unet_deep_cache_full_1"].path))
    with torch.no_grad():
        want, _ = DeepCacheUNetModule(unet, specs["unet_deep_cache_full_1"], config)(
            **{k: torch.from_numpy(v) for k, v in feeds.items()}
        )
    got, _ = session.run(None, {n: feeds[n] for n in specs["unet_deep_cache_full_1"].input_names})
    rms, largest = _errors(want.numpy().astype(np.float64), got)  # the bounds the fp16 UNet graph keeps
    assert rms <= RMS_BOUND and largest <= MAX_BOUND, f"rms {rms:.2e}, max {largest:.2e}"


@pytest.mark.parametrize("variant", ["inpaint", "sdxl-refiner"])
def test_every_unet_of_the_families_exports_its_graphs(request, variant, tmp_path):
    """The inpainting UNet (9 channels in) and the SDXL refiner's (5 time ids, no ControlNet residuals): their
    graphs, exported as `sdrt export --deep-cache` exports them, compute what the torch networks do."""
    import onnxruntime as ort
    from diffusers import UNet2DConditionModel

    from sdrt.export.exporter import export_deep_cache
    from sdrt.model_dir import ModelDir

    model = request.getfixturevalue({"inpaint": "inpaint_model", "sdxl-refiner": "sdxl_refiner_model"}[variant])
    spec = Manifest.for_model(ModelDir.open(model), RANGES).components["unet"]
    unet = UNet2DConditionModel.from_pretrained(model / "unet").eval()
    config = dict(unet.config)
    specs, files = export_deep_cache(unet, spec, config, (1,), RANGES, tmp_path, ExportConfig(deep_cache=(1,)))
    full, shallow = specs.values()
    values = {"cfg_batch": 2, "latent_height": 9, "latent_width": 13, "text_sequence": 77}
    feeds = full.sample_inputs(values, torch.Generator().manual_seed(2))
    with torch.no_grad():
        want_pred, want_feature = DeepCacheUNetModule(unet, full, config)(**feeds)
        shallow_feeds = {n: feeds.get(n, want_feature) for n in shallow.input_names}
        want_shallow = DeepCacheUNetModule(unet, shallow, config)(**shallow_feeds)
    got_pred, got_feature = ort.InferenceSession(str(tmp_path / files[full.name].path)).run(
        None, {k: v.numpy() for k, v in feeds.items()}
    )
    (got_shallow,) = ort.InferenceSession(str(tmp_path / files[shallow.name].path)).run(
        None, {k: v.numpy() for k, v in shallow_feeds.items()}
    )
    assert feeds["sample"].shape[1] == (9 if variant == "inpaint" else 4)
    for got, want in ((got_pred, want_pred), (got_feature, want_feature), (got_shallow, want_shallow)):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4)
