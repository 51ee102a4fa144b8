"""The web UI's <lora:name:weight> syntax: read, summed, removed from the prompt text; one set per request."""

from __future__ import annotations

import pytest

from sdrt.conditioning.lora_prompts import parse_loras, request_loras, strip_loras


def test_tags_are_read_summed_and_removed():
    text = "a cat <lora:style:0.8>, detailed <lora:detail> <lora:style:0.2><lora:off:0>"
    assert parse_loras(text) == (("detail", 1.0), ("style", 1.0))
    assert strip_loras(text) == "a cat , detailed  "
    assert parse_loras("no tags (at:1.2) [here]") == ()


@pytest.mark.parametrize(
    "text, message",
    [
        ("<hypernet:x:1>", "extra network sdrt does not run"),
        ("<lora:x:0.5:0.3>", "one weight for the text encoders and the UNet"),
        ("<lora:x:te=0.5>", "one weight"),
        ("<lora:x:heavy>", "weight 'heavy' is not a number"),
        ("<lora:x:inf>", "is not finite"),
    ],
)
def test_malformed_tags_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_loras(text)


def test_a_request_has_one_set_from_its_prompts_and_negatives():
    assert request_loras(["a <lora:a:0.5>", "b <lora:a:0.25>"], ["", "<lora:a:0.25>"]) == (("a", 0.5),)
    with pytest.raises(ValueError, match="name different LoRA sets .*separate requests"):
        request_loras(["a <lora:a>", "b"], ["", ""])
