"""A single-file checkpoint in the original (LDM / SGM) layout, read as data and turned into a diffusers directory.

The family is found from the weights' keys and shapes by diffusers' own `infer_diffusers_model_type`, and
each part's weights are renamed by diffusers' own conversion functions (`convert_ldm_unet_checkpoint`,
`convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`, `convert_open_clip_checkpoint`); what
diffusers' `from_single_file` would fetch from a hub, the configs and the tokenizers, comes from sdrt's
shipped copies of the published configs (`configs/*.json`) and the offline CLIP tokenizer, or from
`config_dir`. Every part's converted weights must match its architecture key for key and shape for shape
before anything is written: a checkpoint that does not fit is refused, never half loaded.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

from sdrt.files import read_json_object
from sdrt.weights_io import PICKLE_SUFFIXES, load_pickle_weights_only

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
UNET_PREFIX = "model.diffusion_model."
PREDICTION_TYPES = ("epsilon", "v_prediction")
# diffusers' model type -> the shipped config that describes it; SD 2.x files do not say what their UNet predicts
MODEL_TYPES = {
    "v1": "sd15",
    "inpainting": "sd15_inpainting",
    "v2": {"v_prediction": "sd21_768_v", "epsilon": "sd21_512_epsilon"},
    "inpainting_v2": "sd2_inpainting",
    "xl_base": "sdxl_base",
    "xl_refiner": "sdxl_refiner",
    "xl_inpaint": "sdxl_inpainting",
    "upscale": "sd_x4_upscaler",
}
EOT = "<|endoftext|>"


class SafetensorsCheckpoint(Mapping):
    """A safetensors file as a read-only mapping that loads each tensor when it is asked for (memory-mapped)."""

    def __init__(self, path: Path) -> None:
        from safetensors import SafetensorError, safe_open

        try:
            self._file = safe_open(str(path), framework="pt")
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"{path} is not a readable safetensors file: {exc}") from exc
        self._keys = list(self._file.keys())
        self._index = set(self._keys)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._index:
            raise KeyError(key)
        return self._file.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._index


def read_checkpoint(path: str | os.PathLike, allow_pickle: bool = False) -> Mapping[str, torch.Tensor]:
    """The tensors of a `.safetensors` checkpoint, or (with `allow_pickle`) of a pickled `.ckpt`, read as data."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"checkpoint {file} does not exist")
    if file.suffix == ".safetensors":
        return SafetensorsCheckpoint(file)
    if file.suffix not in PICKLE_SUFFIXES:
        raise ValueError(
            f"{file} is neither a .safetensors checkpoint nor a pickled one ({', '.join(PICKLE_SUFFIXES)})"
        )
    if not allow_pickle:
        raise ValueError(
            f"{file} is a pickle ({file.suffix}): loading a pickle can run any code it carries, so sdrt refuses it. "
            "Convert it to .safetensors, or pass --allow-pickle (allow_pickle=True) to read it with torch's "
            "weights-only loader, which accepts tensors and plain data and never runs code"
        )
    data: Any = load_pickle_weights_only(file)
    while isinstance(data, Mapping) and "state_dict" in data:  # Lightning-style checkpoints nest the weights
        data = data["state_dict"]
    if not isinstance(data, Mapping):
        raise ValueError(f"{file} holds a {type(data).__name__}, not a dictionary of tensors")
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


@cache
def published_config(name: str) -> dict[str, Any]:
    """One shipped published configuration: model_index, each part's config, the tokenizers' pad tokens."""
    return read_json_object(CONFIG_DIR / f"{name}.json")


def model_type(checkpoint: Mapping[str, torch.Tensor]) -> str:
    """diffusers' name for the checkpoint's model type; ValueError for what is not an SD 1.x/2.x/SDXL checkpoint."""
    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES, infer_diffusers_model_type

    if not any(key.startswith(UNET_PREFIX) for key in checkpoint):
        raise ValueError(
            f"it has no UNet in the original layout (no {UNET_PREFIX}* keys): not a full Stable Diffusion "
            "checkpoint (a VAE, LoRA or embedding file?)"
        )
    found = infer_diffusers_model_type(checkpoint)
    # diffusers answers "v1" for anything it does not recognise: make sure it is one
    if found == "v1" and CHECKPOINT_KEY_NAMES["v1"] not in checkpoint:
        raise ValueError(
            "its UNet keys fit no published Stable Diffusion 1.x, 2.x or SDXL architecture (diffusers' key for it, "
            f"{CHECKPOINT_KEY_NAMES['v1']}, is missing); if it is another architecture of these families, pass "
            "--config DIR (a diffusers directory of that architecture)"
        )
    if found not in MODEL_TYPES:
        raise ValueError(
            f"it is a {found} checkpoint; sdrt runs Stable Diffusion 1.x, 2.x, SDXL and x4 upscaler checkpoints"
        )
    return found


def choose_config(found: str, prediction_type: str | None) -> str:
    """The shipped config for diffusers' model type; ValueError when the file cannot say (SD 2.x's prediction type)."""
    choice = MODEL_TYPES[found]
    if isinstance(choice, str):
        return choice
    if prediction_type is None:
        raise ValueError(
            "it is a Stable Diffusion 2.x checkpoint, and SD 2.x files do not record what their UNet predicts: "
            "768 models (2.0-768, 2.1) predict v, 512 base models epsilon. Pass --prediction-type v_prediction "
            "or --prediction-type epsilon (prediction_type=...), or --config DIR with the model's scheduler config"
        )
    return choice[prediction_type]


def found_prediction_type(checkpoint: Mapping[str, torch.Tensor], found: str) -> str:
    """What an SD 2.x file's UNet predicts, from a test forward pass (sdrt.single_file.prediction); ValueError
    asking for --prediction-type when the pass cannot decide."""
    from sdrt.single_file.prediction import probe_checkpoint

    choice = MODEL_TYPES[found]
    unet_config = published_config(next(iter(choice.values())))["unet"]  # the 2.x configs' UNets are one
    try:
        probe = probe_checkpoint(checkpoint, unet_config)
    except ValueError as exc:
        reason = f"its UNet could not be probed ({exc})"
    else:
        if probe.prediction_type is not None:
            log.info("SD 2.x UNet probed: %s -> %s", probe.describe(), probe.prediction_type)
            return probe.prediction_type
        reason = f"a test forward pass of its UNet could not tell ({probe.describe()})"
    try:
        return choose_config(found, None)
    except ValueError as exc:
        raise ValueError(f"{exc}; {reason}") from None


@dataclass(frozen=True)
class Conversion:
    """What to write for a checkpoint: model_index, every part's config and the tokenizers' pad tokens."""

    index: dict[str, Any]  # model_index.json
    configs: dict[str, dict[str, Any]]  # part -> config.json / scheduler_config.json
    tokenizers: dict[str, str | Path]  # tokenizer part -> pad token to build it with, or a directory to copy
    described: str  # what the checkpoint was taken for, for logs and errors


def plan(
    checkpoint: Mapping[str, torch.Tensor],
    prediction_type: str | None = None,
    config_dir: str | os.PathLike | None = None,
) -> Conversion:
    """The configs a checkpoint is converted with: the published ones of its model type, or `config_dir`'s."""
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}")
    if config_dir is not None:
        conversion = _from_config_dir(Path(config_dir))
    else:
        found = model_type(checkpoint)
        if prediction_type is None and not isinstance(MODEL_TYPES[found], str):
            prediction_type = found_prediction_type(checkpoint, found)
        name = choose_config(found, prediction_type)
        data = published_config(name)
        configs = {
            k: dict(v) for k, v in data.items() if k not in ("description", "model_index") and "pad_token" not in v
        }
        tokenizers = {k: v["pad_token"] for k, v in data.items() if isinstance(v, dict) and "pad_token" in v}
        conversion = Conversion(dict(data["model_index"]), configs, tokenizers, data["description"])
    if prediction_type is not None:
        conversion.configs["scheduler"]["prediction_type"] = prediction_type
    return conversion


def _from_config_dir(root: Path) -> Conversion:
    """The configs of a diffusers directory (model_index.json, part configs, tokenizers) to convert with."""
    from sdrt.families import family_for
    from sdrt.model_dir import read_config_files, read_model_index

    index = read_model_index(root)
    configs = read_config_files(root, index)
    family = family_for(index, configs, where=str(root / "model_index.json"))
    tokenizers: dict[str, str | Path] = {}
    for pair in family.text_encoders:
        # a tokenizer the directory holds is copied; one it lacks is built (OpenCLIP's GELU encoders pad with "!")
        openclip = configs.get(pair.network, {}).get("hidden_act") == "gelu"
        tokenizers[pair.tokenizer] = (
            root / pair.tokenizer if (root / pair.tokenizer).is_dir() else "!" if openclip else EOT
        )
    return Conversion(index, configs, tokenizers, f"the configs of {root}")


def convert_part(
    checkpoint: Mapping[str, torch.Tensor], part: str, library: str, cls: str, config: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """One model part's weights under diffusers' names, checked key for key and shape for shape against its config."""
    from diffusers.loaders import single_file_utils as sfu

    model = empty_model(library, cls, config)
    if part == "unet":
        converted = sfu.convert_ldm_unet_checkpoint(checkpoint, dict(config))
    elif part == "vae":
        converted = sfu.convert_ldm_vae_checkpoint(checkpoint, dict(config))
    elif part.startswith("text_encoder"):
        converted = _convert_text_encoder(checkpoint, part, model)
    else:
        raise ValueError(f"sdrt does not convert a {part} from a single file")
    return check_weights(part, converted, model)


def check_weights(part: str, weights: Mapping[str, torch.Tensor], model: Any) -> dict[str, torch.Tensor]:
    """`weights` if they are exactly `model`'s parameters and buffers by name and shape; ValueError otherwise."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # transformers' position ids are a buffer the file may carry; the model makes its own
    weights = {k: v for k, v in weights.items() if v is not None and not k.endswith("position_ids")}
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = sorted(k for k in set(expected) & set(weights) if tuple(weights[k].shape) != expected[k])
    if missing or unexpected or wrong:
        details = [
            f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", wrong))
            if keys
        ]
        if wrong:
            k = wrong[0]
            details.append(f"{k} is {tuple(weights[k].shape)}, the architecture's {expected[k]}")
        raise ValueError(f"its {part} does not fit the architecture: {'; '.join(details)}")
    return weights


def _convert_text_encoder(checkpoint: Mapping[str, torch.Tensor], part: str, model: Any) -> dict[str, torch.Tensor]:
    """A text encoder's weights: OpenAI CLIP (SD 1.x, SDXL's first) or OpenCLIP (SD 2.x, SDXL's second) layout."""
    from diffusers.loaders import single_file_utils as sfu

    keys = list(checkpoint)
    if part == "text_encoder_2":
        base = any(k.startswith("conditioner.embedders.1.model.") for k in keys)
        prefix = "conditioner.embedders.1.model." if base else "conditioner.embedders.0.model."
        converted = sfu.convert_open_clip_checkpoint(model, checkpoint, prefix=prefix)
    elif any(k.startswith(p) for k in keys for p in sfu.LDM_CLIP_PREFIX_TO_REMOVE):
        converted = sfu.convert_ldm_clip_checkpoint(checkpoint)
    elif any(k.startswith("cond_stage_model.model.") for k in keys):
        converted = sfu.convert_open_clip_checkpoint(model, checkpoint, prefix="cond_stage_model.model.")
    else:
        raise ValueError(f"it has no {part} weights (no cond_stage_model.* or conditioner.embedders.* keys)")
    if not any(k.startswith("text_model.") for k in model.state_dict()):
        # transformers 5 flattens CLIPTextModel: its weights have no text_model. prefix
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    return converted


def empty_model(library: str, cls: str, config: Mapping[str, Any]):
    """The part's module built from its config on the meta device: its weights' names and shapes, no memory."""
    import importlib

    loader = getattr(importlib.import_module(library), cls)
    with torch.device("meta"):
        if library == "transformers":
            return loader(loader.config_class.from_dict(dict(config)))
        return loader.from_config(dict(config))


def write_diffusers_dir(
    checkpoint: Mapping[str, torch.Tensor], conversion: Conversion, root: Path, source: str
) -> None:
    """Write the checkpoint as a diffusers directory under `root`, one part's weights in memory at a time.

    A part that does not fit raises ValueError; the caller discards the half-written directory.
    """
    import shutil

    from safetensors.torch import save_file

    from sdrt.families import family_for
    from sdrt.families.base import WEIGHTS
    from sdrt.single_file.tokenizer import clip_tokenizer

    index = conversion.index
    family = family_for(index, conversion.configs, where=f"the configs {source} is converted with")
    for part in family.model_parts:
        if part.name not in conversion.configs:
            raise ValueError(f"{source}: no config for its {part.name} (the config directory lacks {part.name}/)")
        library, cls = index[part.name]
        try:
            weights = convert_part(checkpoint, part.name, library, cls, conversion.configs[part.name])
        except ValueError as exc:
            raise ValueError(
                f"{source} was taken for {conversion.described}, but {exc}. If it is another architecture, pass "
                "--config DIR (a diffusers directory of that architecture)"
            ) from exc
        (root / part.name).mkdir(parents=True)
        (root / part.name / "config.json").write_text(json.dumps(conversion.configs[part.name], indent=2) + "\n")
        save_file(_storable(weights), str(root / part.name / WEIGHTS[library][0]), metadata={"format": "pt"})
        del weights
        log.info("converted the %s of %s", part.name, source)
    for name, pad in conversion.tokenizers.items():
        if isinstance(pad, Path):
            shutil.copytree(pad, root / name)
        else:
            clip_tokenizer(pad).save_pretrained(root / name)
    for part in family.support_parts:  # the schedulers (the x4 upscaler's low-res noising one too)
        if part.config == "scheduler_config.json":
            (root / part.name).mkdir()
            config = json.dumps(conversion.configs[part.name], indent=2) + "\n"
            (root / part.name / "scheduler_config.json").write_text(config)
    (root / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def _storable(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors, none sharing memory with another (safetensors stores each once)."""
    out, seen = {}, set()
    for key, value in weights.items():
        value = value.contiguous()
        pointer = (value.data_ptr(), value.numel())
        out[key] = value.clone() if pointer in seen else value
        seen.add(pointer)
    return out
