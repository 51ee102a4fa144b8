"""Quieting the libraries sdrt loads models with: their progress bars and advice are meant for their own users."""

from __future__ import annotations


def quiet_third_party() -> None:
    """transformers' and diffusers' loading progress bars and info-level advice off (errors still shown)."""
    import diffusers
    import transformers

    for lib in (transformers, diffusers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()
