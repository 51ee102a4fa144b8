"""The denoising loop and everything around the engine calls."""
