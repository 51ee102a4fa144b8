"""The demo models' tokenizer: a real CLIP byte-level BPE, its merges learned from a small corpus of prompt words."""

from __future__ import annotations

import collections
import itertools

CORPUS = """
a photo of an astronaut riding a horse on the moon, highly detailed, sharp focus, studio lighting
portrait of a woman with red hair in a garden, oil painting, trending on artstation, 4k, 8k
a cat sitting on a wooden table next to a cup of coffee, morning light, bokeh, cinematic
landscape with mountains and a lake at sunset, dramatic clouds, wide angle, masterpiece
a futuristic city at night with neon lights and flying cars, cyberpunk, concept art
blurry, low quality, worst quality, jpeg artifacts, watermark, text, deformed, ugly, extra fingers
an old castle in the forest, fantasy, illustration, digital art, intricate, elegant, colorful
a dog running on the beach, golden hour, photograph, realistic, high resolution, detailed fur
still life of flowers in a vase, watercolor, soft pastel colors, painting by a famous artist
a robot reading a book in a library, warm light, dust, volumetric, octane render, unreal engine
"""

NUM_MERGES = 400


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def learn_bpe(corpus: str, num_merges: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn CLIP-style BPE merges (words end in '</w>') and build the vocabulary CLIP's tokenizer expects."""
    byte_chars = bytes_to_unicode()
    words = collections.Counter(
        tuple("".join(byte_chars[b] for b in w.encode())) for w in corpus.lower().replace(",", " , ").split()
    )
    splits = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in words}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: collections.Counter[tuple[str, str]] = collections.Counter()
        for w, count in words.items():
            parts = splits[w]
            for a, b in itertools.pairwise(parts):
                pairs[(a, b)] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))  # ties broken deterministically
        merges.append(best)
        for w in words:
            parts, merged, i = splits[w], [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            splits[w] = merged
    chars = list(byte_chars.values())
    tokens = chars + [c + "</w>" for c in chars] + [a + b for a, b in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    return vocab, merges


def demo_tokenizer(pad_token: str = "<|endoftext|>", model_max_length: int = 77):
    """A CLIPTokenizer over the learned vocabulary; SD 1.x pads with the end token, OpenCLIP models with "!"."""
    from transformers import CLIPTokenizer

    vocab, merges = learn_bpe(CORPUS, NUM_MERGES)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length, pad_token=pad_token)
