"""The reference of the DeepCache parity tests: the authors' `DeepCacheSDHelper` (PyPI DeepCache 0.1.1) enabled on a
diffusers pipeline. A test module importing this is skipped, with the reason, where the package is missing."""

from __future__ import annotations

import pytest
import torch

from sdrt.schedulers import make_scheduler
from tests.runtime.compare import HEIGHT, WIDTH

helper_module = pytest.importorskip(
    "DeepCache", reason="the reference is the authors' DeepCache package (requirements-nodeps.txt installs it)"
)
SIZE = {"height": HEIGHT, "width": WIDTH}
PROMPT, NEGATIVE = "a photo of an astronaut riding a horse", "blurry"


def with_helper(pipe, interval: int, branch: int, scheduler: str | None, seed: int, **kwargs):
    """diffusers' images with the authors' helper enabled on the pipeline (a fresh scheduler, as sdrt makes)."""
    pipe.scheduler = make_scheduler(scheduler, pipe.original_scheduler.config) if scheduler else pipe.original_scheduler
    helper = helper_module.DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=interval, cache_branch_id=branch)
    helper.enable()
    try:
        return pipe(**kwargs, generator=[torch.Generator("cpu").manual_seed(seed)]).images
    finally:
        helper.disable()
