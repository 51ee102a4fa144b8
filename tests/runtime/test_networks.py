"""Extra networks per request on the torch backend: LyCORIS files and hypernetwork chains, images against the
references written from their definitions (diffusers' pipeline with the reference deltas in its weights, or the
web UI's hypernetwork formula in its attention layers), batching apart, restoring exactly after a failed switch,
and fused at export for the engine backends."""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from sdrt import Pipeline
from sdrt.cli import main
from sdrt.hypernetworks import attention_layers
from sdrt.manifest import read_manifest
from sdrt.model_dir import ModelDir
from tests.conftest import RANGES
from tests.hypernetwork_files import write_hypernetwork
from tests.runtime.compare import HEIGHT, STEPS, WIDTH, assert_images_close
from tests.test_hypernetworks import WebUIHypernetworkAttention, load_data
from tests.test_lycoris import LAYERS, locon_cp, loha, lokr, reference_delta, write

SIZE_STEPS = {"height": HEIGHT, "width": WIDTH, "num_inference_steps": STEPS}
LYCORIS_LAYERS = {"q": loha, "conv": lambda s, g: lokr(s, g), "te_q": loha, "te_fc1": lokr, "conv64": locon_cp}


def _shape(modules, key):
    _, part, path = LAYERS[key]
    return tuple(modules[part].get_submodule(path).weight.shape)


@pytest.fixture(scope="module")
def networks(demo_model, tmp_path_factory):
    """A LyCORIS file of every kind on the text encoder and UNet, two hypernetworks, and their directories."""
    model = ModelDir.open(demo_model)
    modules = {"text_encoder": model.load_part("text_encoder"), "unet": model.load_part("unet")}
    root = tmp_path_factory.mktemp("networks")
    (root / "loras").mkdir()
    (root / "hypernetworks").mkdir()
    g = torch.Generator().manual_seed(21)
    layers = {key: make(_shape(modules, key), g) for key, make in LYCORIS_LAYERS.items()}
    # a trained network's deltas are small beside the weights, yet they change the image: so do these
    layers = {
        k: {n: (t * 1.5 if n.endswith(("_a", "w1", "up.weight")) else t) for n, t in w.items()}
        for k, w in layers.items()
    }
    write(root / "loras" / "lyco.safetensors", {LAYERS[k][0]: w for k, w in layers.items()})
    settings = {"activation": "swish", "layer_norm": True, "dropout": (0, 0.3, 0), "scale": 1.0}
    a = write_hypernetwork(root / "hypernetworks" / "a.pt", [32, 64], seed=2, **settings)
    b = write_hypernetwork(root / "hypernetworks" / "b.pt", [32], seed=3, old=True, scale=1.0)
    return {"root": root, "layers": layers, "modules": modules, "hypernetworks": {"a": a, "b": b}}


@pytest.fixture(scope="module")
def pipe(demo_model, networks):
    root = networks["root"]
    return Pipeline.load(
        demo_model, backend="torch", ranges=RANGES, lora_dir=root / "loras", hypernetwork_dir=root / "hypernetworks"
    )


@pytest.fixture(scope="module")
def reference(demo_model):
    """diffusers' own pipeline on the same weights, for the references (its weights changed only inside `deltas`)."""
    from diffusers import StableDiffusionPipeline

    reference = StableDiffusionPipeline.from_pretrained(demo_model, safety_checker=None, local_files_only=True)
    reference.set_progress_bar_config(disable=True)
    return reference


@contextmanager
def deltas(reference, layers, te: float, unet: float):
    """The reference pipeline with each layer's ΔW (by LyCORIS' definitions) added, times its part's weight."""
    parts = {"text_encoder": reference.text_encoder, "unet": reference.unet}
    saved = {p: {k: v.clone() for k, v in m.state_dict().items()} for p, m in parts.items()}
    with torch.no_grad():
        for key, w in layers.items():
            _, part, path = LAYERS[key]
            weight = parts[part].get_submodule(path).weight
            weight += reference_delta(w, tuple(weight.shape)) * (te if part == "text_encoder" else unet)
    try:
        yield reference
    finally:
        for p, m in parts.items():
            m.load_state_dict(saved[p])


@contextmanager
def hypernetworks(reference, chain):
    """The reference pipeline's attention layers running the web UI's hypernetwork formula."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    reference.unet.set_attn_processor(WebUIHypernetworkAttention([(load_data(p), m) for p, m in chain]))
    try:
        yield reference
    finally:
        reference.unet.set_attn_processor(AttnProcessor2_0())


def _theirs(reference, prompt, seed, negative=None):
    generator = [torch.Generator("cpu").manual_seed(seed)]
    return reference(prompt, negative_prompt=negative, **SIZE_STEPS, generator=generator).images


def _pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


def test_lycoris_per_request_with_split_weights_matches_the_definitions(pipe, reference, networks):
    ours = pipe.generate("a cat on a table <lora:lyco:0.8:0.5>", **SIZE_STEPS, seed=3)
    with deltas(reference, networks["layers"], te=0.8, unet=0.5):
        theirs = _theirs(reference, "a cat on a table ", 3)
    assert_images_close(ours.images, theirs)
    plain = pipe.generate("a cat on a table", **SIZE_STEPS, seed=3)
    assert np.abs(_pixels(ours) - _pixels(plain)).max() > 10
    # the text encoders alone, then the UNet alone: each part takes its own weight
    te_only = pipe.generate("a cat on a table <lora:lyco:0.8:0>", **SIZE_STEPS, seed=3)
    with deltas(reference, networks["layers"], te=0.8, unet=0.0):
        assert_images_close(te_only.images, _theirs(reference, "a cat on a table ", 3))


def test_hypernetwork_chain_matches_the_web_uis_formula(pipe, reference, networks):
    h = networks["hypernetworks"]
    ours = pipe.generate("a cat <hypernet:a:0.8> <hypernet:b>", negative_prompt="blurry", **SIZE_STEPS, seed=4)
    with hypernetworks(reference, [(h["a"], 0.8), (h["b"], 1.0)]):
        theirs = _theirs(reference, "a cat  ", 4, negative="blurry")
    assert_images_close(ours.images, theirs)
    plain = pipe.generate("a cat", negative_prompt="blurry", **SIZE_STEPS, seed=4)
    assert np.abs(_pixels(ours) - _pixels(plain)).max() > 10
    swapped = pipe.generate("a cat <hypernet:b> <hypernet:a:0.8>", negative_prompt="blurry", **SIZE_STEPS, seed=4)
    with hypernetworks(reference, [(h["b"], 1.0), (h["a"], 0.8)]):  # the chain runs in the order written
        assert_images_close(swapped.images, _theirs(reference, "a cat  ", 4, negative="blurry"))


def test_requests_with_other_networks_batch_apart_and_each_equals_its_solo_image(pipe):
    kwargs = {**SIZE_STEPS, "negative_prompt": "blurry", "scheduler": "euler_a"}
    chain = [pipe.request(p + " <hypernet:a:0.7>", seed=i, **kwargs) for i, p in enumerate(["a cat", "a dog"])]
    mixed = [pipe.request(p + " <hypernet:a:0.7> <lora:lyco:0.6>", seed=i, **kwargs) for i, p in enumerate(["a", "b"])]
    other_chain = pipe.request("a cat <hypernet:a:0.7> <hypernet:b>", seed=0, **kwargs)
    plain = pipe.request("a cat", seed=0, **kwargs)
    assert pipe.batch_key(chain[0]) == pipe.batch_key(chain[1])
    assert pipe.batch_key(mixed[0]) == pipe.batch_key(mixed[1])
    keys = {pipe.batch_key(r) for r in (chain[0], mixed[0], other_chain, plain)}
    assert len(keys) == 4
    with pytest.raises(ValueError, match="equal batch_key"):
        pipe.run_batch([chain[0], other_chain])
    solo = {id(r): _pixels(pipe.run(r)) for r in (*chain, *mixed, other_chain, plain)}
    for group in (chain, mixed):  # after the others ran: switching back and forth is exact
        for request, result in zip(group, pipe.run_batch(group), strict=True):
            assert np.abs(_pixels(result) - solo[id(request)]).max() <= 1
    assert np.array_equal(_pixels(pipe.run(plain)), solo[id(plain)])
    assert len({solo[id(r)].tobytes() for r in (chain[0], mixed[0], other_chain, plain)}) == 4


def _model_hash(pipe) -> str:
    digest = hashlib.sha256()
    for name, engine in sorted(pipe.engines.items()):
        module = getattr(engine, "module", None)
        if module is None:
            continue
        for key, value in module.state_dict().items():
            digest.update(f"{name}.{key}".encode())
            digest.update(value.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _hooks(pipe) -> int:
    unet = pipe.engines["unet"].module.adapted
    return sum(len(a.to_k._forward_pre_hooks) + len(a.to_v._forward_pre_hooks) for a in attention_layers(unet))


def test_a_failed_switch_restores_the_base_exactly_and_harms_no_other_request(demo_model, networks, tmp_path):
    loras, hypers = tmp_path / "loras", tmp_path / "hypernetworks"
    loras.mkdir()
    hypers.mkdir()
    (loras / "lyco.safetensors").write_bytes((networks["root"] / "loras" / "lyco.safetensors").read_bytes())
    bad = dict(networks["layers"])
    bad["q"] = {**bad["q"], "hada_w2_a": torch.full_like(bad["q"]["hada_w2_a"], float("nan"))}
    write(loras / "poisoned.safetensors", {LAYERS[k][0]: w for k, w in bad.items()})
    (hypers / "a.pt").write_bytes(networks["hypernetworks"]["a"].read_bytes())
    write_hypernetwork(hypers / "wide.pt", [768, 1024], seed=5)  # SD 1.x/2.x widths: not this tiny model's
    (hypers / "broken.pt").write_bytes(b"PK\x03\x04 not really a torch archive")
    pipe = Pipeline.load(demo_model, backend="torch", ranges=RANGES, lora_dir=loras, hypernetwork_dir=hypers)
    base = _model_hash(pipe)
    plain = _pixels(pipe.generate("a cat", **SIZE_STEPS, seed=7))
    held = _pixels(pipe.generate("a cat <lora:lyco:0.5> <hypernet:a>", **SIZE_STEPS, seed=7))
    failures = {
        "a cat <lora:lyco:0.5> <lora:poisoned>": "poisoned.safetensors has non-finite weights",
        "a cat <lora:lyco:0.5> <hypernet:wide>": r"wide.pt has modules for context widths 768, 1024, but this model",
        "a cat <hypernet:a> <hypernet:broken>": "broken.pt is not a readable torch file",
    }
    for prompt, message in failures.items():
        with pytest.raises(ValueError, match=message):
            pipe.generate(prompt, **SIZE_STEPS, seed=7)
        # a failed switch leaves the base model, exactly: no LoRA fused, no hypernetwork hooked
        assert _hooks(pipe) == 0
        assert _model_hash(pipe) == base
    assert np.array_equal(_pixels(pipe.generate("a cat", **SIZE_STEPS, seed=7)), plain)
    assert np.array_equal(_pixels(pipe.generate("a cat <lora:lyco:0.5> <hypernet:a>", **SIZE_STEPS, seed=7)), held)


def test_fused_at_export_runs_on_onnxruntime_as_per_request_on_torch(demo_model, networks, pipe, tmp_path):
    root, out = networks["root"], tmp_path / "art"
    argv = ["export", str(demo_model), "-o", str(out), "--max-batch", "2", "--min-size", "64", "--max-size", "256",
            "--opt-size", "128", "--lora", f"{root / 'loras' / 'lyco.safetensors'}:0.8:0.5",
            "--hypernetwork", f"{networks['hypernetworks']['a']}:0.8",
            "--hypernetwork", str(networks["hypernetworks"]["b"])]  # fmt: skip
    assert main(argv) == 0
    manifest = read_manifest(out)
    assert [(lora["name"], lora["weight"], lora["unet_weight"]) for lora in manifest.loras] == [
        ("lyco.safetensors", 0.8, 0.5)
    ]
    assert [(h["name"], h["multiplier"]) for h in manifest.hypernetworks] == [("a.pt", 0.8), ("b.pt", 1.0)]
    fused = Pipeline.load(out, backend="onnxruntime").generate("a cat on a table", **SIZE_STEPS, seed=3)
    per_request = pipe.generate(
        "a cat on a table <lora:lyco:0.8:0.5> <hypernet:a:0.8> <hypernet:b>", **SIZE_STEPS, seed=3
    )
    assert_images_close(fused.images, per_request.images)


def test_engine_backends_point_to_export_for_hypernetworks(artifact, networks):
    pipe = Pipeline.load(artifact, backend="onnxruntime", hypernetwork_dir=networks["root"] / "hypernetworks")
    with pytest.raises(ValueError, match=r"trace the hypernetwork into it at export instead \(sdrt export MODEL"):
        pipe.request("a cat <hypernet:a>", height=64, width=64, num_inference_steps=2)
    with pytest.raises(ValueError, match="hypernetwork 'nope' is not in .* \\(it has: a, b\\)"):
        pipe.request("a cat <hypernet:nope>", height=64, width=64, num_inference_steps=2)
    assert pipe.generate("a cat", height=64, width=64, num_inference_steps=1, seed=1).images


def _addnet_hash(path: Path) -> str:
    """kohya's hash: sha256 of a safetensors file past its 8-byte header length and JSON header."""
    data = path.read_bytes()
    return hashlib.sha256(data[8 + int.from_bytes(data[:8], "little") :]).hexdigest()


def test_infotext_names_the_networks_with_the_web_uis_short_hashes(pipe, networks):
    result = pipe.generate("a cat <lora:lyco:0.8:0.5> <hypernet:a:0.7> <hypernet:b>", **SIZE_STEPS, seed=5)
    text = result.parameters[0]
    lyco = networks["root"] / "loras" / "lyco.safetensors"
    assert f'Lora hashes: "lyco: {_addnet_hash(lyco)[:12]}"' in text
    a, b = networks["hypernetworks"]["a"], networks["hypernetworks"]["b"]
    hashes = [hashlib.sha256(p.read_bytes()).hexdigest()[:10] for p in (a, b)]
    assert f'Hypernet: "a, b", Hypernet hash: "{hashes[0]}, {hashes[1]}", Hypernet strength: "0.7, 1"' in text
    assert "TI hashes" not in text and "Lora hashes" not in pipe.generate("a cat", **SIZE_STEPS, seed=5).parameters[0]


# --- the SDXL refiner ------------------------------------------------------------------------------------------

REFINER_STEPS = 10


def _kohya(layers: dict[str, tuple[torch.nn.Module, str]], g: torch.Generator, rank: int = 4, scale: float = 0.6):
    """A kohya LoRA's tensors for these (module, path) layers, and each layer's ΔW = up @ down * alpha / rank."""
    tensors, reference = {}, {}
    for name, (module, path) in layers.items():
        out_f, in_f = module.get_submodule(path).weight.shape
        down, up = torch.randn(rank, in_f, generator=g) * scale, torch.randn(out_f, rank, generator=g) * scale
        tensors |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(2.0)}
        reference[name] = (path, up @ down * 2.0 / rank)
    return tensors, reference


def test_sdxl_refiner_takes_the_networks_that_fit_it(sdxl_model, sdxl_refiner_model, tmp_path):
    """An SDXL LoRA's text_encoder_2 layers run in the refiner too (its UNet layers do not fit there); a LoRA made
    for the refiner's UNet and a hypernetwork of the refiner's widths run in its pass alone; each part as diffusers'
    base and refiner with those deltas (and the web UI's hypernetwork formula) in their weights."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
    from safetensors.torch import save_file

    from sdrt.schedulers import make_scheduler

    base_dir, refiner_dir = ModelDir.open(sdxl_model), ModelDir.open(refiner_model := sdxl_refiner_model)
    te1, te2, unet = (base_dir.load_part(p) for p in ("text_encoder", "text_encoder_2", "unet"))
    refiner_unet = refiner_dir.load_part("unet")
    attention = [f"encoder.layers.0.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")]
    g = torch.Generator().manual_seed(8)
    xl_layers = {
        **{f"lora_te1_text_model_{p.replace('.', '_')}": (te1, p) for p in attention},
        **{f"lora_te2_text_model_{p.replace('.', '_')}": (te2, f"text_model.{p}") for p in attention},
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": (
            unet, "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
        ),
    }  # fmt: skip
    own_layers = {
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_v": (
            refiner_unet, "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v",
        ),
    }  # fmt: skip
    loras, hypers = tmp_path / "loras", tmp_path / "hypernetworks"
    loras.mkdir()
    hypers.mkdir()
    xl_tensors, xl_ref = _kohya(xl_layers, g)
    own_tensors, own_ref = _kohya(own_layers, g, scale=1.2)
    save_file(xl_tensors, str(loras / "xl.safetensors"))
    save_file(own_tensors, str(loras / "own.safetensors"))
    h32 = write_hypernetwork(hypers / "h32.pt", [32], seed=9, scale=2.0)  # the refiner's widths, not the base's
    pipe = Pipeline.load(
        sdxl_model, backend="torch", ranges=RANGES, refiner=refiner_model, lora_dir=loras, hypernetwork_dir=hypers
    )
    prompt = "a lighthouse <lora:xl:0.8> <lora:own:0.9> <hypernet:h32:0.7>"
    size = {"height": HEIGHT, "width": WIDTH}
    plain = pipe.generate("a lighthouse", **size, num_inference_steps=REFINER_STEPS, seed=60, refiner_switch_at=0.3)

    base = StableDiffusionXLPipeline.from_pretrained(sdxl_model, local_files_only=True)
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(refiner_model, local_files_only=True)
    for p in (base, refiner):
        p.set_progress_bar_config(disable=True)
        p.scheduler = make_scheduler(None, p.scheduler.config)
    with torch.no_grad():
        for name, (path, delta) in xl_ref.items():
            part = {"lora_te1": base.text_encoder, "lora_te2": base.text_encoder_2}.get(name[:8], base.unet)
            part.get_submodule(path).weight += 0.8 * delta
            if name.startswith("lora_te2"):  # the refiner's text encoder is the base's second
                refiner.text_encoder_2.get_submodule(path).weight += 0.8 * delta
        for path, delta in own_ref.values():
            refiner.unet.get_submodule(path).weight += 0.9 * delta
    decoded = []  # the latents the refiner's pass leaves: its networks' share is too small to show in the pixels
    runner_decode = pipe.runner.decode
    pipe.runner.decode = lambda model, latents, *rest: decoded.append(latents) or runner_decode(model, latents, *rest)
    try:
        ours = pipe.generate(prompt, **size, num_inference_steps=REFINER_STEPS, seed=60, refiner_switch_at=0.3)
    finally:
        pipe.runner.decode = runner_decode

    generators = [torch.Generator("cpu").manual_seed(60)]
    common = {"prompt": "a lighthouse   ", "num_inference_steps": REFINER_STEPS, "guidance_scale": 5.0}
    latents = base(**common, **size, denoising_end=0.3, output_type="latent", generator=generators).images
    state = [g.get_state() for g in generators]

    def refine(output_type: str = "latent"):
        for g, s in zip(generators, state, strict=True):
            g.set_state(s)
        out = refiner(**common, image=latents, denoising_start=0.3, generator=generators, output_type=output_type)
        return out.images

    from diffusers.models.attention_processor import AttnProcessor2_0

    refiner.unet.set_attn_processor(WebUIHypernetworkAttention([(load_data(h32), 0.7)]))
    assert_images_close(ours.images, refine("pil"))
    theirs = refine()
    assert np.abs(_pixels(ours) - _pixels(plain)).max() > 10
    assert (decoded[0] - theirs).abs().max() < 1e-4  # float rounding (3e-6 measured)
    # each of the refiner's own networks has its share in the pass: without it, the refiner leaves other latents
    refiner.unet.set_attn_processor(AttnProcessor2_0())
    assert (refine() - theirs).abs().max() > 2e-2  # 0.22 measured
    refiner.unet.set_attn_processor(WebUIHypernetworkAttention([(load_data(h32), 0.7)]))
    with torch.no_grad():
        for path, delta in own_ref.values():
            refiner.unet.get_submodule(path).weight -= 0.9 * delta
    assert (refine() - theirs).abs().max() > 2e-2  # 0.19 measured
