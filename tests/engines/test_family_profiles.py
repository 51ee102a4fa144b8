"""TensorRT profiles come from each family's specs: SDXL's inputs and the refiner's widths need no special case."""

from __future__ import annotations

from sdrt.engines.tensorrt_profiles import build_profiles
from sdrt.manifest import read_manifest


def test_sdxl_and_refiner_profiles_cover_their_conditioning(sdxl_artifact, sdxl_refiner_artifact):
    for artifact, text_width, time_ids in ((sdxl_artifact, 64, 6), (sdxl_refiner_artifact, 32, 5)):
        manifest = read_manifest(artifact)
        spec, ranges = manifest.components["unet"], manifest.ranges
        static, dynamic = build_profiles(spec, ranges, "both")
        shapes = dynamic.shapes(spec)
        residuals = spec.attributes.get("residuals", [])  # ControlNet's, on the base only
        assert len(residuals) == (0 if artifact == sdxl_refiner_artifact else len(spec.inputs) - 5)
        assert set(shapes) == {"sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids", *residuals}
        for name in residuals:  # each at its block's resolution: the latents' divided (rounded up), cfg-doubled
            tensor = next(t for t in spec.inputs if t.name == name)
            for shape, batch, latent in zip(
                shapes[name],
                (1, 2 * ranges.opt_batch, 2 * ranges.max_batch),
                (ranges.min_size, ranges.opt_size, ranges.max_size),
                strict=True,
            ):
                side = latent // ranges.latent_factor
                values = {"cfg_batch": batch, "latent_height": side, "latent_width": side}
                assert shape == tensor.concrete(values), name
        low, opt, high = shapes["encoder_hidden_states"]
        assert low == (1, 77, text_width) and high == (2 * ranges.max_batch, 77 * ranges.max_text_chunks, text_width)
        assert shapes["text_embeds"][2] == (2 * ranges.max_batch, 32)  # the cfg-doubled batch
        assert shapes["time_ids"] == ((1, time_ids), (2 * ranges.opt_batch, time_ids), (2 * ranges.max_batch, time_ids))
        assert static.shapes(spec)["time_ids"][0] == static.shapes(spec)["time_ids"][2]
        pooled = build_profiles(manifest.components["text_encoder_2"], ranges, "dynamic")[0]
        assert set(pooled.shapes(manifest.components["text_encoder_2"])) == {
            "inputs_embeds",
            "clip_skip",
            "eos_position",
        }


def test_unclip_profiles_cover_the_image_encoder_and_class_labels(unclip_artifact):
    manifest = read_manifest(unclip_artifact)
    vision = manifest.components["image_encoder"]
    (profile,) = build_profiles(vision, manifest.ranges, "dynamic")
    assert profile.shapes(vision)["pixel_values"] == (
        (1, 3, 32, 32),
        (1, 3, 32, 32),
        (manifest.ranges.max_batch, 3, 32, 32),
    )
    unet = manifest.components["unet"]
    low, _, high = build_profiles(unet, manifest.ranges, "dynamic")[0].shapes(unet)["class_labels"]
    assert low == (1, 64) and high == (2 * manifest.ranges.max_batch, 64)
