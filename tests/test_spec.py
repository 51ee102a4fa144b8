"""Shape ranges and component specs: the one description every stage reads."""

from __future__ import annotations

import pytest
import torch

from sdrt.components import vae_decoder_spec
from sdrt.spec import ComponentSpec, ShapeRanges, parse_dim


def test_dims_double_the_unet_batch_for_guidance():
    dims = ShapeRanges(max_batch=4, min_size=256, max_size=1024, opt_size=512).dims()
    assert (dims["batch"].min, dims["batch"].max) == (1, 4)
    assert (dims["cfg_batch"].min, dims["cfg_batch"].opt, dims["cfg_batch"].max) == (1, 2, 8)
    assert (dims["latent_height"].min, dims["latent_height"].opt, dims["latent_height"].max) == (32, 64, 128)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_batch": 0}, "max_batch 0 must be at least 1"),
        ({"min_size": 100}, "min_size 100 is not a positive multiple of 8"),
        ({"opt_size": 2048}, "sizes need min_size <= opt_size <= max_size"),
        ({"opt_batch": 9}, r"opt_batch 9 is outside 1\.\.max_batch"),
    ],
)
def test_ranges_validate(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShapeRanges(**kwargs)


def test_derived_dims_and_output_shapes():
    spec = vae_decoder_spec(4, 8)
    assert parse_dim("8*latent_height") == (8, "latent_height")
    feeds = {"latent": torch.zeros(2, 4, 9, 13)}
    values = spec.resolve(feeds, ShapeRanges(min_size=64, max_size=256, opt_size=128))
    assert values == {"batch": 2, "latent_height": 9, "latent_width": 13}
    assert spec.output_shapes(values) == {"images": (2, 3, 72, 104)}
    assert spec.dynamic_axes()["images"] == {0: "batch", 2: "8*latent_height", 3: "8*latent_width"}


def test_json_round_trip():
    spec = vae_decoder_spec(4, 8)
    assert ComponentSpec.from_json(spec.to_json()) == spec
    ranges = ShapeRanges(max_batch=3, min_size=64)
    assert ShapeRanges.from_json(ranges.to_json()) == ranges


def test_inconsistent_symbols_are_reported():
    from sdrt.components import unet_spec

    spec = unet_spec(4, 4, 32, 1000)
    feeds = spec.sample_inputs(
        {"cfg_batch": 2, "latent_height": 8, "latent_width": 8, "text_length": 77, "text_sequence": 77}
    )
    feeds["timestep"] = torch.zeros(3)
    with pytest.raises(ValueError, match="timestep axis 0 gives cfg_batch=3, but another input gives 2"):
        spec.resolve(feeds, ShapeRanges(min_size=64))


def test_fractions_of_the_latent_size_round_up_as_stride_2_convolutions_do():
    from sdrt.spec import TensorSpec, dim_of

    assert dim_of("latent_height/4").size({"latent_height": 65}) == 17  # 65 -> 33 -> 17
    assert dim_of("8*latent_width").size({"latent_width": 9}) == 72
    spec = ComponentSpec(
        name="toy",
        inputs=(
            TensorSpec("sample", "float32", ("cfg_batch", 4, "latent_height", "latent_width")),
            TensorSpec("residual", "float32", ("cfg_batch", 8, "latent_height/2", "latent_width/2")),
        ),
        outputs=(TensorSpec("out", "float32", ("cfg_batch", 8, "latent_height/2", "latent_width/2")),),
        batch_dim="cfg_batch",
    )
    ranges = ShapeRanges(max_batch=2, min_size=64, max_size=256, opt_size=128)
    feeds = spec.sample_inputs({"cfg_batch": 2, "latent_height": 9, "latent_width": 12})
    assert feeds["residual"].shape == (2, 8, 5, 6)
    assert spec.resolve(feeds, ranges) == {"cfg_batch": 2, "latent_height": 9, "latent_width": 12}
    feeds["residual"] = torch.zeros(2, 8, 4, 6)
    with pytest.raises(ValueError, match=r"toy input residual axis 2 must be 5 \(1\*ceil\(latent_height/2\)\), got 4"):
        spec.resolve(feeds, ranges)
    with pytest.raises(ValueError, match="not an int, a symbol, 'N\\*symbol' or 'symbol/N'"):
        TensorSpec("bad", "float32", ("latent_height*2",))
