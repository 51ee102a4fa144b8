"""DeepCache's shallow UNet calls are timed as a stage of their own ("unet_shallow"), apart from full calls."""

from __future__ import annotations

import pytest

from sdrt.runtime.deep_cache import DeepCache
from sdrt.runtime.timing import STAGES, UNET, UNET_SHALLOW
from tests.conftest import RANGES


@pytest.fixture(scope="module")
def torch_pipe(demo_model):
    from sdrt import Pipeline

    return Pipeline.load(demo_model, backend="torch", ranges=RANGES)


@pytest.mark.parametrize(("interval", "shallow"), [(3, 4), (5, 5)])
def test_shallow_calls_are_timed_apart(torch_pipe, interval, shallow):
    params = {"height": 64, "width": 64, "num_inference_steps": 7, "seed": 3, "scheduler": "ddim"}
    t = torch_pipe.generate("a cat", deep_cache=DeepCache(interval, 0), **params).timings
    # 7 steps, the whole UNet at steps 0, interval, 2 x interval, ...: 3 full with interval 3, 2 with 5
    assert (t.unet_calls, t.unet_shallow_calls, t.unet_full_calls) == (7, shallow, 7 - shallow)
    assert 0 < t.unet_shallow < t.unet  # `unet` holds every UNet call, the shallow ones a part of it
    assert t.unet_full_per_call > 0 and t.unet_shallow_per_call > 0
    names = [name for name, _ in t.rows()]
    assert "unet per full call" in names and "unet per shallow call" in names


def test_without_deep_cache_every_call_is_full(torch_pipe):
    t = torch_pipe.generate("a cat", height=64, width=64, num_inference_steps=3, seed=3, scheduler="ddim").timings
    assert (t.unet_calls, t.unet_shallow_calls, t.unet_full_calls, t.unet_shallow) == (3, 0, 3, 0.0)
    assert t.unet_full_per_call == t.unet_per_call
    assert "unet per shallow call" not in [name for name, _ in t.rows()]
    assert {UNET, UNET_SHALLOW} <= set(STAGES)
