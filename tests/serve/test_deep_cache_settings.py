"""The web UI API's DeepCache keys in override_settings: deep_cache_interval (on when given) and deep_cache_branch."""

from __future__ import annotations

import pytest

from sdrt.runtime.deep_cache import DeepCache
from sdrt.serve.a1111_settings import deep_cache
from sdrt.serve.errors import InputError


def test_override_settings_turn_deep_cache_on():
    assert deep_cache({}) is None
    assert deep_cache({"CLIP_stop_at_last_layers": 2}) is None
    assert deep_cache({"deep_cache_interval": 3}) == DeepCache(3, 0)
    assert deep_cache({"deep_cache_interval": 5.0, "deep_cache_branch": 1}) == DeepCache(5, 1)  # a slider's float


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"deep_cache_interval": 0}, "override_settings.deep_cache_interval"),
        ({"deep_cache_interval": "3"}, "override_settings.deep_cache_interval"),
        ({"deep_cache_interval": 3, "deep_cache_branch": -1}, "override_settings.deep_cache_branch"),
        ({"deep_cache_branch": 1}, "override_settings.deep_cache_interval"),
    ],
)
def test_bad_values_name_their_key(overrides, field):
    with pytest.raises(InputError) as caught:
        deep_cache(overrides)
    assert caught.value.field == field
