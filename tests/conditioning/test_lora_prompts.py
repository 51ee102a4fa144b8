"""The web UI's extra-network tags: <lora:name:te:unet> and <hypernet:name:multiplier>, read, removed from the
prompt text; one set (one chain) per request."""

from __future__ import annotations

import pytest

from sdrt.conditioning.lora_prompts import (
    HypernetTag,
    LoraTag,
    parse_hypernetworks,
    parse_loras,
    request_hypernetworks,
    request_loras,
    strip_loras,
)


def test_tags_are_read_summed_and_removed():
    text = "a cat <lora:style:0.8>, detailed <lora:detail> <lora:style:0.2><lora:off:0>"
    assert parse_loras(text) == (("detail", 1.0, 1.0), ("style", 1.0, 1.0))
    assert strip_loras(text) == "a cat , detailed  "
    assert parse_loras("no tags (at:1.2) [here]") == ()
    assert strip_loras("a <hypernet:ink:0.5> cat") == "a  cat"


def test_text_encoder_and_unet_weights_as_the_web_ui_reads_them():
    # positional: te, then unet (the unet takes te's weight when it is not given); named te= / unet= win
    assert parse_loras("<lora:x:0.5:0.3>") == (LoraTag("x", 0.5, 0.3),)
    assert parse_loras("<lora:x:0.5>") == (LoraTag("x", 0.5, 0.5),)
    assert parse_loras("<lora:x:te=0.25>") == (LoraTag("x", 0.25, 0.25),)
    assert parse_loras("<lora:x:unet=0.7>") == (LoraTag("x", 1.0, 0.7),)
    assert parse_loras("<lora:x:0.5:unet=0>") == (LoraTag("x", 0.5, 0.0),)
    assert parse_loras("<lyco:x:0.4>") == (LoraTag("x", 0.4, 0.4),)  # the web UI's alias
    # a name twice adds per part; a LoRA with both weights 0 is no LoRA
    assert parse_loras("<lora:x:0.5:0> <lora:x:0:0.25>") == (LoraTag("x", 0.5, 0.25),)
    assert parse_loras("<lora:x:0:0>") == ()


def test_hypernetworks_chain_in_the_order_written():
    assert parse_hypernetworks("<hypernet:b:0.5> a <hypernet:a> <hypernet:b:2> <hypernet:off:0>") == (
        HypernetTag("b", 0.5), HypernetTag("a", 1.0), HypernetTag("b", 2.0),
    )  # fmt: skip
    assert parse_loras("<hypernet:b:0.5> <lora:x>") == (LoraTag("x", 1.0, 1.0),)


@pytest.mark.parametrize(
    "text, message",
    [
        ("<textual:x:1>", "extra network sdrt does not run"),
        ("<lora:x:0.5:0.3:8>", r"does not cut LoRAs to a lower rank \(dyn\)"),
        ("<lora:x:dyn=8>", "dyn"),
        ("<lora:x:lbw=1,0,1>", "lbw is not a LoRA setting sdrt reads"),
        ("<lora:x:heavy>", "weight 'heavy' is not a number"),
        ("<lora:x:inf>", "is not finite"),
        ("<lora:x:te=nan>", "te weight 'nan' is not finite"),
        ("<lora: :1>", "a LoRA tag names a file"),
        ("<hypernet:x:1:2>", "sdrt reads <hypernet:name>"),
        ("<hypernet:x:strong>", "multiplier 'strong' is not a number"),
    ],
)
def test_malformed_tags_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_loras(text)


def test_a_request_has_one_set_from_its_prompts_and_negatives():
    assert request_loras(["a <lora:a:0.5>", "b <lora:a:0.25>"], ["", "<lora:a:0.25>"]) == (("a", 0.5, 0.5),)
    with pytest.raises(ValueError, match="name different LoRA sets .*separate requests"):
        request_loras(["a <lora:a>", "b"], ["", ""])
    assert request_hypernetworks(["a <hypernet:h>"], ["<hypernet:g:0.5>"]) == (("h", 1.0), ("g", 0.5))
    with pytest.raises(ValueError, match="name different hypernetwork chains .*separate requests"):
        request_hypernetworks(["<hypernet:h> <hypernet:g>", "<hypernet:g> <hypernet:h>"], ["", ""])
