"""Seamless tiling (the web UI's `tiling`): images that repeat without seams, every convolution of the UNet and the
VAE padding circularly instead of with zeros, as diffusers' recipe sets `padding_mode="circular"` on their Conv2d.

A request with `tiling=True` runs the model's tiling engines: on the torch backend its own modules, switched to
circular padding for the call (`engines.base.Circular`); on every other backend the circular graphs `sdrt export
--tiling` exported beside the others (manifest `variants`), loaded on the first such request. Requests with and
without tiling batch apart (it is part of the plan's key).
"""

from __future__ import annotations

from sdrt.params import Param

PARAMS = (
    Param(
        "tiling",
        "bool",
        "seamless tiling: the image wraps around at its edges (a texture that repeats without seams); an artifact "
        "needs the graphs of `sdrt export --tiling`",
        default=False,
        webui="tiling",
        owner="tiling",
    ),
)
