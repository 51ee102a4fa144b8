"""Text conditioning: prompts and negative prompts through one or more CLIP text encoders.

One embedder covers SD 1.x/2.x (one encoder's states) and SDXL (each encoder's states concatenated on the
feature axis, the last pooled output as an added vector, and zero embeddings for an empty negative prompt when
the model's `force_zeros_for_empty_prompt` says so), as diffusers' pipelines' `encode_prompt` do. Prompt
editing and alternation (`[from:to:when]`, `[a|b]`) switch the text a row is conditioned on: every part of the
schedule is encoded for the whole batch, each distinct text-encoder row once for all parts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sdrt.conditioning.embedders import ConditionedRequest, EmbedBatch
from sdrt.conditioning.guidance import CROSSATTN, VECTOR, ClassifierFreeGuidance, Conditioning, is_guided
from sdrt.conditioning.prompts import PromptEncoder, PromptTokens, RowCache, TokenizedPrompt
from sdrt.lazy import deferred

if TYPE_CHECKING:
    import torch
else:
    torch = deferred("torch")

STATES = "encoder_hidden_states"  # the UNet's cross-attention input


class TextEmbedder:
    """Prompts -> the UNet's cross-attention states (and, with `pooled`, the pooled text embedding as a vector)."""

    def __init__(self, encoders: Sequence[PromptEncoder], pooled: str | None = None, force_zeros: bool = False) -> None:
        if not encoders:
            raise ValueError("a text embedder needs at least one text encoder")
        self.encoders = tuple(encoders)
        self.pooled = pooled  # UNet input of the last pooled output (SDXL's "text_embeds"), or None
        self.force_zeros = force_zeros  # an empty negative prompt gives zero embeddings instead of its encoding

    def tokens(self, request: ConditionedRequest, encoder: PromptEncoder) -> PromptTokens:
        """The request's tokens for `encoder` (the pipeline tokenizes every request once, before it runs)."""
        if encoder.key not in request.tokens:
            raise ValueError("the request was not tokenized for this model: make it with Pipeline.request")
        return request.tokens[encoder.key]

    def check(self, request: ConditionedRequest) -> None:
        for encoder in self.encoders:
            if request.clip_skip > encoder.clip_skip_max:
                layers = encoder.engine.spec.attributes["num_layers"]
                raise ValueError(
                    f"clip_skip {request.clip_skip} is outside 0..{encoder.clip_skip_max} "
                    f"(the {encoder.engine.spec.name.replace('_', ' ')} has {layers} layers)"
                )
            tokens = self.tokens(request, encoder)
            encoder.check(tokens.negatives, field="negative_prompt")
            encoder.check(tokens.prompts, field="prompt")

    def batch_key(self, request: ConditionedRequest) -> tuple:
        """CLIP skip and the chunk count: a batch encodes every row with one skip, padded to one chunk count."""
        return (request.clip_skip, self.chunks([request]))

    def chunks(self, requests: Sequence[ConditionedRequest]) -> int:
        """Chunks of the longest text the batch encodes (prompts, and negatives of guided prompts), all encoders."""
        count = 1
        for encoder in self.encoders:
            for r in requests:
                tokens = self.tokens(r, encoder)
                encoded = [n for n, g in zip(tokens.negatives, r.guidance_scales, strict=True) if is_guided(g)]
                count = max(count, *(p.num_chunks for p in (*encoded, *tokens.prompts)))
        return count

    def embed(self, batch: EmbedBatch) -> Conditioning:
        """The text conditioning of every image and guided image, with a part from each step a prompt switches at."""
        starts = (0, *self.switches(batch.requests))
        parts = [(start, self.at_step(batch.requests, batch.cfg, start, batch.cache)) for start in starts]
        return Conditioning.scheduled(parts)

    def switches(self, requests: Sequence[ConditionedRequest]) -> list[int]:
        """Steps at which any prompt or negative prompt of the batch switches to another text."""
        steps: set[int] = set()
        for encoder in self.encoders:
            for r in requests:
                tokens = self.tokens(r, encoder)
                for prompt in (*tokens.prompts, *tokens.negatives):
                    steps.update(prompt.switches)
        return sorted(steps)

    def at_step(
        self, requests: Sequence[ConditionedRequest], cfg: ClassifierFreeGuidance, step: int, cache: RowCache
    ) -> Conditioning:
        """The conditioning of `step`: every encoder's states of the rows' texts at that step, concatenated."""
        clip_skip = requests[0].clip_skip
        chunks = self.chunks(requests)
        cond_states, uncond_states = [], []
        cond_pooled = uncond_pooled = None
        for encoder in self.encoders:
            uncond, cond = self.rows(requests, cfg, encoder, step)
            zero = [self.force_zeros and n.is_empty for n in uncond]  # the same rows for every encoder
            encoded = [n for n, z in zip(uncond, zero, strict=True) if not z]
            out = encoder.encode([*encoded, *cond], clip_skip, chunks, cache)
            k = len(encoded)
            cond_states.append(out.states[k:])
            uncond_states.append(_with_zero_rows(out.states[:k], zero))
            if out.pooled is not None:  # the pooled embedding of the last encoder that has one (diffusers' rule)
                cond_pooled, uncond_pooled = out.pooled[k:], _with_zero_rows(out.pooled[:k], zero)
        cond = {STATES: torch.cat(cond_states, dim=-1)}
        uncond = {STATES: torch.cat(uncond_states, dim=-1)}
        kinds = {STATES: CROSSATTN}
        if self.pooled is not None:
            if cond_pooled is None:
                raise ValueError(f"{self.pooled} needs a text encoder with a pooled output; this model has none")
            cond[self.pooled], uncond[self.pooled], kinds[self.pooled] = cond_pooled, uncond_pooled, VECTOR
        return Conditioning(cond=cond, uncond=uncond, kinds=kinds)

    def rows(
        self,
        requests: Sequence[ConditionedRequest],
        cfg: ClassifierFreeGuidance,
        encoder: PromptEncoder,
        step: int = 0,
    ) -> tuple[list[TokenizedPrompt], list[TokenizedPrompt]]:
        """(negatives of the guided images, prompts of all images) at `step`, one entry per row, in the UNet's order."""
        prompts = [p.at(step) for r in requests for p in r.per_image(self.tokens(r, encoder).prompts)]
        negatives = [n.at(step) for r in requests for n in r.per_image(self.tokens(r, encoder).negatives)]
        return cfg.guided_items(negatives), prompts


def _with_zero_rows(encoded: torch.Tensor, zero: Sequence[bool]) -> torch.Tensor:
    """`encoded` rows with zero rows inserted where `zero` is True (the zeroed empty negatives)."""
    if not any(zero):
        return encoded
    out = encoded.new_zeros((len(zero), *encoded.shape[1:]))
    keep = [i for i, z in enumerate(zero) if not z]
    if keep:
        out[keep] = encoded
    return out
