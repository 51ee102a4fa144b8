"""The refit weight map on a real tiny export: coverage, exact round trip, and LoRA weights equal to a re-export.

The TensorRT refit itself needs a GPU (tests/engines/test_tensorrt.py); everything up to the arrays handed
to `engine.refit` is checked here on the CPU, including LoRA switching through recording engines.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from sdrt.engines.refit import MappedWeight, WeightMap, WeightSource, build_weight_map, weight_map_for
from sdrt.export.onnx_export import export_component
from sdrt.lora import LoraFuser
from sdrt.manifest import read_manifest
from sdrt.model_dir import ModelDir
from sdrt.runtime.weights import NetworkWeights
from tests.test_lora import lora_factors, write_kohya_lora

TEXT_ENCODER, UNET = "text_encoder", "unet"


def initializers(path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


@pytest.fixture(scope="module")
def setup(demo_model, artifact):
    modules = ModelDir.open(demo_model).load_modules()
    text_encoder, unet = modules[TEXT_ENCODER].text_encoder, modules[UNET].unet
    manifest = read_manifest(artifact)
    maps = {c: build_weight_map(artifact / manifest.files[c].path, modules[c]) for c in (TEXT_ENCODER, UNET)}
    return {"modules": modules, "manifest": manifest, "maps": maps, "raw": (text_encoder, unet)}


@pytest.mark.parametrize("component", [TEXT_ENCODER, UNET])
def test_every_conv_and_linear_weight_is_mapped(setup, artifact, component):
    weight_map, module = setup["maps"][component], setup["modules"][component]
    layers = [f"{n}.weight" for n, m in module.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert layers and not [n for n in layers if n not in weight_map.params()]
    # every parameter of these components reaches the graph, but the token table: the runtime looks tokens up
    lookup = ("text_encoder.embeddings.token_embedding.weight",) if component == TEXT_ENCODER else ()
    assert weight_map.unmapped_params == lookup
    inits = initializers(artifact / setup["manifest"].files[component].path)
    assert not [n for n in weight_map.unmapped_initializers if n in dict(module.named_parameters())]
    assert {w.initializer for w in weight_map.weights} | set(weight_map.unmapped_initializers) == set(inits)


def test_linear_weights_are_found_transposed(setup):
    unet_map = setup["maps"][UNET]
    to_q = [w for w in unet_map.weights if any(p.endswith("attn1.to_q.weight") for p in w.params)]
    assert to_q and all(w.transform == "transpose" and w.initializer.startswith("onnx::MatMul") for w in to_q)
    assert any(w.transform == "same" and w.initializer == "unet.conv_in.weight" for w in unet_map.weights)


@pytest.mark.parametrize("component", [TEXT_ENCODER, UNET])
def test_base_weights_round_trip_exactly(setup, artifact, component):
    weight_map, module = setup["maps"][component], setup["modules"][component]
    inits = initializers(artifact / setup["manifest"].files[component].path)
    arrays = weight_map.refit_weights(dict(module.named_parameters()))
    assert set(arrays) == {w.initializer for w in weight_map.weights}
    for name, array in arrays.items():
        assert array.dtype == inits[name].dtype and np.array_equal(array, inits[name]), name


def test_lora_refit_weights_equal_a_re_export(setup, tmp_path):
    """Fuse a LoRA, place it through the map, and compare with exporting the fused modules again."""
    text_encoder, unet = setup["raw"]
    modules, manifest = setup["modules"], setup["manifest"]
    path = write_kohya_lora(tmp_path / "a.safetensors", lora_factors({"unet": unet, "text_encoder": text_encoder}, 1))
    with LoraFuser({"text_encoder": text_encoder, "unet": unet}).fused(path, scale=0.8) as changed:
        assert changed["unet"] and changed["text_encoder"]
        for component in (TEXT_ENCODER, UNET):
            weight_map = setup["maps"][component]
            refit = weight_map.refit_weights(dict(modules[component].named_parameters()))
            out = tmp_path / component
            export_component(modules[component], manifest.components[component], manifest.ranges, out)
            again = build_weight_map(out / "model.onnx", modules[component])
            reexported = initializers(out / "model.onnx")
            holder = {p: w.initializer for w in again.weights for p in w.params}
            prefix = f"{component}."
            lora_params = {prefix + n for n in changed[component]}
            compared = 0
            for w in weight_map.weights:
                mine, theirs = refit[w.initializer], reexported[holder[w.params[0]]]
                if w.transform != "transpose":  # merged equal weights may be held reshaped in the other export
                    mine, theirs = mine.ravel(), theirs.ravel()
                assert np.array_equal(mine, theirs), w.initializer
                compared += bool(lora_params & set(w.params))
            assert compared == len(lora_params)  # every LoRA-changed weight was compared, transposed ones too


def test_merged_parameters_must_stay_equal():
    weight_map = WeightMap(
        (MappedWeight("onnx::Mul_1", ("a.weight", "b.weight"), "reshape", (2, 1, 1), "float32"),), (), ()
    )
    equal = {"a.weight": torch.ones(2), "b.weight": torch.ones(2)}
    assert np.array_equal(weight_map.refit_weights(equal)["onnx::Mul_1"], np.ones((2, 1, 1), np.float32))
    with pytest.raises(ValueError, match="b.weight and a.weight now differ, but the export merged them"):
        weight_map.refit_weights({**equal, "b.weight": torch.tensor([1.0, 2.0])})


def test_map_is_cached_as_json(setup, artifact, tmp_path):
    import shutil

    copy = tmp_path / "artifact"
    shutil.copytree(artifact, copy, ignore=shutil.ignore_patterns("engines"))
    first = weight_map_for(copy, setup["manifest"], UNET, setup["modules"][UNET])
    assert first == setup["maps"][UNET]
    [cached] = (copy / "engines" / "refit").glob("unet-*.json")
    assert WeightMap.from_json(__import__("json").loads(cached.read_text())) == first
    cached.write_text("{broken")
    assert weight_map_for(copy, setup["manifest"], UNET, setup["modules"][UNET]) == first  # rebuilt, not trusted


class RecordingEngine:
    """Stands in for a refittable TensorRT engine: refits through the real weight map, keeps the latest weights."""

    refittable = True

    def __init__(self, source: WeightSource) -> None:
        self.source = source
        self.weights: dict[str, np.ndarray] = {}

    def refit_from(self, module, changed=()) -> None:
        self.source.refit(self, module, changed)

    def refit(self, weights) -> None:
        self.weights = {k: v.copy() for k, v in weights.items()}


def recording_model(artifact, engines):
    """The parts of a loaded model the LoRA switch reads, with recording engines for the text encoder and UNet."""
    manifest = read_manifest(artifact)
    return SimpleNamespace(
        family=manifest.model_family, engines=engines, manifest=manifest, backend="tensorrt", path=artifact
    )


@pytest.fixture(scope="module")
def recording(demo_model, artifact):
    manifest = read_manifest(artifact)
    engines = {c: RecordingEngine(WeightSource(artifact, manifest, c)) for c in (TEXT_ENCODER, UNET)}
    return engines, NetworkWeights(recording_model(artifact, engines), model_dir=demo_model)


@pytest.fixture(scope="module")
def loras(demo_model, tmp_path_factory):
    modules = ModelDir.open(demo_model).load_modules()
    raw = {"unet": modules[UNET].unet, "text_encoder": modules[TEXT_ENCODER].text_encoder}
    directory = tmp_path_factory.mktemp("loras")
    return [write_kohya_lora(directory / f"{seed}.safetensors", lora_factors(raw, seed)) for seed in (1, 2)]


def test_switching_loras_a_b_a_refits_a_exactly(recording, loras, artifact):
    engines, weights = recording
    a, b = loras

    def state(lora):
        weights.switch([] if lora is None else [(lora, 1.0)])
        return {c: dict(e.weights) for c, e in engines.items()}

    first, other, again, none = state(a), state(b), state(a), state(None)
    for c, engine in engines.items():
        mapped = engine.source.weight_map(None)  # computed at the first refit
        assert set(first[c]) == {w.initializer for w in mapped.weights}  # every mapped weight, every time
        assert any(not np.array_equal(first[c][k], other[c][k]) for k in first[c])
        assert all(np.array_equal(first[c][k], again[c][k]) for k in first[c])
        onnx_values = initializers(artifact / read_manifest(artifact).files[c].path)
        assert all(np.array_equal(v, onnx_values[k]) for k, v in none[c].items())  # no LoRA: the exported weights


def test_refit_needs_refittable_engines_and_the_source_model(artifact, demo_model, sd2_model, loras):
    manifest = read_manifest(artifact)
    engines = {c: RecordingEngine(WeightSource(artifact, manifest, c)) for c in (TEXT_ENCODER, UNET)}
    engines[UNET].refittable = False
    with pytest.raises(ValueError, match="the unet engine cannot be refit; build the engines with --refit"):
        NetworkWeights(recording_model(artifact, engines), model_dir=demo_model).check()
    engines[UNET].refittable = True
    with pytest.raises(ValueError, match="was not exported from"):
        NetworkWeights(recording_model(artifact, engines), model_dir=sd2_model).check()
    with pytest.raises(ValueError, match=r"need model_dir \(--model-dir\)"):
        NetworkWeights(recording_model(artifact, engines)).switch([(loras[0], 1.0)])


def test_lora_reaching_an_unmapped_weight_is_refused_and_the_base_restored(recording, loras, artifact):
    """A LoRA can only be refit where the map reaches; a weight the export folded away is an error."""
    engines, weights = recording
    conv = "unet.down_blocks.0.resnets.0.conv1.weight"  # adapted by the test LoRA
    source = engines[UNET].source
    full = source.weight_map(None)
    source._map = WeightMap(tuple(w for w in full.weights if conv not in w.params), (), (conv,))
    try:
        with pytest.raises(ValueError, match=r"folded into other constants.*down_blocks\.0\.resnets\.0\.conv1"):
            weights.switch([(loras[0], 1.0)])
        assert weights.held == ()
        onnx_values = initializers(artifact / read_manifest(artifact).files[UNET].path)
        assert all(np.array_equal(v, onnx_values[k]) for k, v in engines[UNET].weights.items())  # refit to the base
    finally:
        source._map = full


def test_lycoris_files_refit_as_their_definitions(recording, setup, artifact, tmp_path):
    """LoHa and LoKr through the TensorRT refit path: the arrays handed to the engines are the base weights plus
    the deltas of LyCORIS' definitions (tests/test_lycoris.py's reference), placed by the weight map."""
    import copy

    from tests.test_lycoris import LAYERS, loha, lokr, reference_delta, write

    engines, weights = recording
    modules = setup["modules"]
    g = torch.Generator().manual_seed(4)
    files = {}
    for key, make in {"q": loha, "conv": lokr, "te_q": loha, "te_fc1": lokr}.items():
        _, part, path = LAYERS[key]
        files[key] = make(tuple(modules[part].get_submodule(f"{part}.{path}").weight.shape), g)
    lyco = write(tmp_path / "lyco.safetensors", {LAYERS[k][0]: w for k, w in files.items()})
    weights.switch([(lyco, 0.7, 0.4)])  # <lora:lyco:0.7:0.4>: the text encoder's weight, then the UNet's
    try:
        for component, scale in ((TEXT_ENCODER, 0.7), (UNET, 0.4)):
            module = copy.deepcopy(modules[component])
            with torch.no_grad():
                for key, w in files.items():
                    _, part, path = LAYERS[key]
                    if part == component:
                        target = module.get_submodule(f"{part}.{path}").weight
                        target += scale * reference_delta(w, tuple(target.shape))
            expected = engines[component].source.weight_map(None).refit_weights(dict(module.named_parameters()))
            refit = engines[component].weights
            assert set(refit) == set(expected)
            for name, array in expected.items():
                np.testing.assert_allclose(refit[name], array, rtol=1e-5, atol=1e-6, err_msg=name)
            base = initializers(artifact / read_manifest(artifact).files[component].path)
            assert sum(not np.array_equal(refit[k], base[k]) for k in refit) >= 2  # both adapted layers moved
    finally:
        weights.switch([])
