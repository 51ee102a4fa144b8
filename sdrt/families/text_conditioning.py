"""What prompt-conditioned families share: their text encoders' tokens, checks, batch key and rows to encode."""

from __future__ import annotations

from collections.abc import Sequence

from sdrt.runtime.guidance import ClassifierFreeGuidance, is_guided
from sdrt.runtime.prompts import PromptEncoder, PromptTokens, TokenizedPrompt
from sdrt.runtime.request import GenerationRequest


class TextConditioner:
    """Base of the conditioners that encode prompts and negative prompts with one or more CLIP text encoders."""

    def __init__(self, encoders: Sequence[PromptEncoder]) -> None:
        self.encoders = tuple(encoders)

    def tokens(self, request: GenerationRequest, encoder: PromptEncoder) -> PromptTokens:
        """The request's tokens for `encoder` (the pipeline tokenizes every request once, before it runs)."""
        if encoder.key not in request.tokens:
            raise ValueError("the request was not tokenized for this model: make it with Pipeline.request")
        return request.tokens[encoder.key]

    def check(self, request: GenerationRequest) -> None:
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

    def batch_key(self, request: GenerationRequest) -> tuple:
        """CLIP skip and the chunk count: a batch encodes every row with one skip, padded to one chunk count."""
        return (request.clip_skip, self.chunks([request]))

    def chunks(self, requests: Sequence[GenerationRequest]) -> int:
        """Chunks of the longest text the batch encodes (prompts, and negatives of guided prompts), all encoders."""
        count = 1
        for encoder in self.encoders:
            for r in requests:
                tokens = self.tokens(r, encoder)
                encoded = [n for n, g in zip(tokens.negatives, r.guidance_scales, strict=True) if is_guided(g)]
                count = max(count, *(p.num_chunks for p in (*encoded, *tokens.prompts)))
        return count

    def rows(
        self, requests: Sequence[GenerationRequest], cfg: ClassifierFreeGuidance, encoder: PromptEncoder
    ) -> tuple[list[TokenizedPrompt], list[TokenizedPrompt]]:
        """(negatives of the guided images, prompts of all images), one entry per row, in the UNet's order."""
        prompts = [p for r in requests for p in r.per_image(self.tokens(r, encoder).prompts)]
        negatives = [n for r in requests for n in r.per_image(self.tokens(r, encoder).negatives)]
        return cfg.guided_items(negatives), prompts
