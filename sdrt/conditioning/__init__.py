"""Conditioning: what a denoising UNet is conditioned on, made of parts.

Prompts become text-encoder rows (`prompts`, with the web UI's syntax in `prompt_syntax` and textual-inversion
vectors from `embeddings`); embedders turn a batch of requests into the UNet's named conditioning inputs of a
kind (`embedders`); classifier-free guidance expands every named input by one row rule (`guidance`). Families
compose these parts; the runtime runs them. Nothing here knows a family or the runtime.
"""
