"""What prompt-conditioned families share: their text encoders' tokens, checks, batch key and rows to encode."""

from __future__ import annotations

from collections.abc import Sequence

from sdrt.runtime.guidance import ClassifierFreeGuidance, Conditioning, is_guided
from sdrt.runtime.prompts import PromptEncoder, PromptTokens, RowCache, TokenizedPrompt
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

    def prepare(
        self, requests: Sequence[GenerationRequest], cfg: ClassifierFreeGuidance, generators: Sequence = ()
    ) -> Conditioning:
        """Conditioning of every image and guided image, with a part from each step where some prompt switches.

        Prompt editing and alternation (`[from:to:when]`, `[a|b]`) switch the text a row is conditioned on;
        every part is encoded for the whole batch, each distinct text-encoder row once for all parts. Text
        conditioning draws no noise: `generators` (one per image) are for families whose conditioning does.
        """
        cache: RowCache = {}
        starts = (0, *self.switches(requests))
        return Conditioning.scheduled([(start, self.condition(requests, cfg, start, cache)) for start in starts])

    def switches(self, requests: Sequence[GenerationRequest]) -> list[int]:
        """Steps at which any prompt or negative prompt of the batch switches to another text."""
        steps: set[int] = set()
        for encoder in self.encoders:
            for r in requests:
                tokens = self.tokens(r, encoder)
                for prompt in (*tokens.prompts, *tokens.negatives):
                    steps.update(prompt.switches)
        return sorted(steps)

    def condition(
        self, requests: Sequence[GenerationRequest], cfg: ClassifierFreeGuidance, step: int, cache: RowCache
    ) -> Conditioning:
        """The conditioning of `step`: the family's inputs from the rows' texts at that step."""
        raise NotImplementedError

    def rows(
        self, requests: Sequence[GenerationRequest], cfg: ClassifierFreeGuidance, encoder: PromptEncoder, step: int = 0
    ) -> tuple[list[TokenizedPrompt], list[TokenizedPrompt]]:
        """(negatives of the guided images, prompts of all images) at `step`, one entry per row, in the UNet's order."""
        prompts = [p.at(step) for r in requests for p in r.per_image(self.tokens(r, encoder).prompts)]
        negatives = [n.at(step) for r in requests for n in r.per_image(self.tokens(r, encoder).negatives)]
        return cfg.guided_items(negatives), prompts
