"""The runtime's own request parameters, declared once (`sdrt.params`), and the set a pipeline takes.

The core of every request (prompts, size, steps, guidance, seed, sampler, input images) is declared here;
features declare theirs beside their code (the hires fix in `hires`, the refiner hand-off in `workflow`,
ControlNet units in `control`), and model families theirs in their modules (unCLIP's `noise_level`, the SDXL
refiner's aesthetic scores). `Pipeline.generate`, `sdrt generate`'s flags and the native HTTP API's fields all
derive from `all_params()`.
"""

from __future__ import annotations

from sdrt.families import Family, families
from sdrt.params import Param, ParamSet
from sdrt.runtime.latents import MAX_SEED

MAX_STEPS = 1000

PROMPT = Param(
    "prompt",
    "texts",
    "the prompt, or a list of prompts; the web UI's syntax: (word:1.3), [word], [from:to:when], [a|b], BREAK",
    default="",
    flag=None,  # the CLI's positional argument
    webui="prompt",
)
CORE = (
    PROMPT,
    Param(
        "negative_prompt",
        "texts",
        "what the image should not contain: one for all prompts, or one per prompt",
        webui="negative_prompt",
    ),
    Param("height", "int", "pixels, a multiple of 8 (default: the input image's, or the artifact's tuned size)"),
    Param("width", "int", "pixels, a multiple of 8 (default: the input image's, or the artifact's tuned size)"),
    Param(
        "num_inference_steps",
        "int",
        "denoising steps (default: the model family's, 30; unCLIP 20)",
        minimum=1,
        maximum=MAX_STEPS,
        flag="--steps",
        field="steps",
        webui="steps",
    ),
    Param(
        "guidance_scale",
        "floats",
        "classifier-free guidance scale: one for all prompts or one per prompt (default: the family's, 7.5; SDXL 5)",
        webui="cfg_scale",
    ),
    Param(
        "seed",
        "int",
        "seed of the first image; image i uses seed + i (default random)",
        minimum=0,
        maximum=MAX_SEED,
        webui="seed",
    ),
    Param(
        "num_images_per_prompt",
        "int",
        "images per prompt",
        default=1,
        minimum=1,
        flag="--batch",
        webui="batch_size",
    ),
    Param(
        "scheduler",
        "str",
        "sampler name or web UI label, e.g. dpmpp_2m_karras or 'DPM++ 2M Karras' (default: the model's own)",
        webui="sampler_name",
    ),
    Param("eta", "float", "DDIM's eta (noise added per step)", default=0.0, minimum=0.0, maximum=1.0),
    Param(
        "clip_skip",
        "int",
        "text-encoder layers to skip from the end, diffusers' numbering: 1 is the web UI's 'CLIP skip 2'",
        minimum=0,
        webui="override_settings.CLIP_stop_at_last_layers",
    ),
    Param(
        "image",
        "image",
        "input image: image-to-image, inpainting with mask_image, or the image an unCLIP model varies",
        webui="init_images",
    ),
    Param(
        "mask_image",
        "image",
        "inpainting mask of the image's size: white is repainted",
        flag="--mask",
        webui="mask",
    ),
    Param(
        "strength",
        "float",
        "with an image: the share of the schedule run, 0..1 (default 0.8, SDXL 0.3; 1.0 when inpainting)",
        minimum=0.0,
        maximum=1.0,
        webui="denoising_strength",
    ),
)


def feature_params() -> tuple[Param, ...]:
    """The parameters of the runtime's features: the refiner hand-off, the hires fix, ControlNet units, DeepCache,
    seamless tiling."""
    from sdrt.runtime.control import PARAMS as CONTROL
    from sdrt.runtime.deep_cache import PARAMS as DEEP_CACHE
    from sdrt.runtime.hires import PARAMS as HIRES
    from sdrt.runtime.seamless import PARAMS as TILING
    from sdrt.runtime.workflow import PARAMS as REFINER

    return (*REFINER, *HIRES, *CONTROL, *DEEP_CACHE, *TILING)


def pipeline_params(model_families: list[Family]) -> ParamSet:
    """The parameters a pipeline running models of these families takes."""
    return ParamSet.of(CORE, feature_params(), *(f.params for f in model_families))


def all_params() -> ParamSet:
    """Every parameter any pipeline takes: what the CLI and the HTTP APIs offer (a pipeline refuses what it lacks)."""
    return ParamSet.of(CORE, feature_params(), *(f.params for f in families().values()))
