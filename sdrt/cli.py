"""The `sdrt` command: demo-model, export, build, generate, upscale, info, bench, serve, doctor."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sdrt.engines import BACKENDS, DEVICES
from sdrt.library_logging import quiet_third_party
from sdrt.params import Param, ParamSet
from sdrt.schedulers import SAMPLERS, canonical_sampler


def _parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The command line; given `argv`, only its command gets its arguments (their imports cost seconds)."""
    parser = argparse.ArgumentParser(prog="sdrt", description="Optimized Stable Diffusion inference runtime.")
    _output_args(parser, default=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    for name, (help_text, add_arguments) in _ARGUMENTS.items():
        p = sub.add_parser(name, help=help_text)
        if chosen in (None, name):
            _output_args(p, default=argparse.SUPPRESS)  # -v/-q after the command, too
            add_arguments(p)
    return parser


def _output_args(p: argparse.ArgumentParser, default: object) -> None:
    p.add_argument("-v", "--verbose", action="store_true", default=default, help="show debug logging")
    p.add_argument("-q", "--quiet", action="store_true", default=default, help="warnings and errors only, no progress")


def _demo_model_args(p: argparse.ArgumentParser) -> None:
    from sdrt.demo import PRESETS, VARIANT_NAMES

    p.add_argument("out_dir", type=Path, help="directory to create")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument(
        "--preset",
        choices=list(PRESETS),
        default="tiny",
        help="tiny (seconds on a CPU; the default), sd15, sd21 or sdxl (published sizes, for benchmarks), sdxl-small "
        "(SDXL's topologies at half widths, for CPU benchmarks)",
    )
    p.add_argument(
        "--variant",
        choices=list(VARIANT_NAMES),
        default=None,
        help="sd1 (SD 1.x), sd2 (SD 2.x 768: v-prediction, GELU text encoder, linear-projection UNet), "
        "inpaint (SD 1.x inpainting, 9-channel UNet), sdxl, sdxl-refiner, sdxl-inpaint, unclip (SD 2.1 unCLIP), "
        "controlnet and controlnet-sdxl (a ControlNet for the preset's SD 1.x / SDXL model); default: the preset's "
        "own (sd2 for sd21, sdxl for sdxl and sdxl-small, else sd1)",
    )


def _export_args(p: argparse.ArgumentParser) -> None:
    from sdrt.export.fp16 import PRECISIONS

    p.add_argument(
        "model_dir",
        type=Path,
        help="a diffusers model directory (model_index.json, ...) or a single-file checkpoint in the original "
        "layout (SD 1.x, 2.x, inpainting, SDXL base or refiner .safetensors)",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="artifact directory to create")
    p.add_argument("--max-batch", type=int, default=4, help="most images per engine call (default 4)")
    p.add_argument("--min-size", type=int, default=256, help="smallest image height/width in pixels (default 256)")
    p.add_argument("--max-size", type=int, default=1024, help="largest image height/width in pixels (default 1024)")
    p.add_argument(
        "--opt-size", type=int, default=None, help="size engines are tuned for (default the model's, e.g. 512)"
    )
    p.add_argument(
        "--max-text-chunks",
        type=int,
        default=4,
        help="most 75-token chunks a prompt may use (default 4: 300 tokens)",
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 17 or newer (default 17)")
    p.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default="fp32",
        help="text encoder and UNet precision (default fp32); fp16 for GPU backends (graph IO stays float32)",
    )
    p.add_argument(
        "--vae-precision",
        choices=list(PRECISIONS),
        default="fp32",
        help="VAE precision (default fp32, which cannot overflow); fp16 suits SD 1.x/2.x VAEs, not SDXL's",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing artifact directory")
    p.add_argument(
        "--tiling",
        action="store_true",
        help="also export the UNet and VAE with circular padding, for seamless tiling (tiling=True); costs their "
        "export time and disk space once more",
    )
    p.add_argument(
        "--deep-cache",
        type=_branch_ids,
        default=(),
        metavar="BRANCH[,BRANCH...]",
        help="also export DeepCache's full and shallow UNet graphs for these branch ids, which the onnxruntime, "
        "openvino and tensorrt backends need to run deep_cache requests; the graphs share one copy of the UNet's "
        "weights (about one UNet more on disk)",
    )
    p.add_argument(
        "--prediction-type",
        choices=("epsilon", "v_prediction"),
        default=None,
        help="single file: what its UNet predicts, which SD 2.x files do not record (768 models: v_prediction); "
        "without it a test forward pass of the UNet decides, or asks for this flag",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="DIR",
        help="single file: a diffusers directory whose configs (and tokenizers) describe it, instead of the "
        "published configs of the family its keys show",
    )
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read pickled .ckpt/.pt files (checkpoint or --vae) with torch's weights-only loader (never runs code)",
    )
    p.add_argument(
        "--lora",
        action="append",
        type=_lora_arg,
        default=[],
        metavar="FILE[:WEIGHT[:UNET_WEIGHT]]",
        help="fuse this LoRA or LyCORIS file (.safetensors) into the exported weights (repeat for several; weight "
        "default 1; a second weight is the UNet's, the first the text encoders'); the way to run LoRAs on ONNX "
        "Runtime, whose engines have their weights baked in",
    )
    p.add_argument(
        "--hypernetwork",
        action="append",
        type=_hypernetwork_arg,
        default=[],
        metavar="FILE[:MULTIPLIER]",
        help="trace this web UI hypernetwork (.pt) into the exported UNet (repeat to chain several, in order; "
        "multiplier default 1); the way to run hypernetworks on the engine backends",
    )
    p.add_argument(
        "--vae",
        type=Path,
        default=None,
        help="export this VAE instead of the model's: a diffusers VAE directory or a single .safetensors file",
    )


def _build_args(p: argparse.ArgumentParser) -> None:
    from sdrt.engines.tensorrt_profiles import PROFILE_MODES as TENSORRT_PROFILES

    p.add_argument("artifact_dir", type=Path)
    _backend_args(p, default="onnxruntime")
    p.add_argument(
        "--optimization", default=None, help="onnxruntime graph optimization: disable, basic, extended or all (default)"
    )
    p.add_argument(
        "--profile",
        choices=list(TENSORRT_PROFILES),
        default=None,
        help="tensorrt optimization profiles: static (tuned shapes only, fastest), dynamic (whole range) "
        "or both (default: static at the tuned shapes, dynamic for the rest)",
    )
    p.add_argument(
        "--timing-cache", type=Path, default=None, help="tensorrt timing cache file (default: in the artifact)"
    )
    p.add_argument("--refit", action="store_true", help="tensorrt: build refittable engines (LoRA switching)")


def _generate_args(p: argparse.ArgumentParser) -> None:
    from sdrt.runtime.params import PROMPT, all_params

    p.epilog = "schedulers: " + ", ".join(f"{name} ({s.label})" for name, s in SAMPLERS.items())
    p.add_argument("path", type=Path, help="artifact directory (or, with --backend torch, a diffusers model directory)")
    p.add_argument("prompt", nargs="?", default=None, help=PROMPT.help + " (optional for unCLIP variations)")
    p.add_argument("--refiner", type=Path, default=None, help="an SDXL refiner artifact to run after the base")
    _param_args(p, all_params())
    _extra_network_args(p)
    p.add_argument("--preview-every", type=int, default=None, metavar="N", help="write a cheap preview every N steps")
    p.add_argument("--preview-dir", type=Path, default=None, help="directory for previews (default: beside the output)")
    p.add_argument(
        "-o", "--output", type=Path, default=Path("sdrt.png"), help="PNG path; with --batch N, -i is appended"
    )
    _backend_args(p, default="onnxruntime")


def _upscale_args(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Upscales an image with an ESRGAN, Real-ESRGAN (compact) or SwinIR file, in tiles. On a backend other than "
        "torch the file is exported to ONNX once, into the cache (--cache-dir, $SDRT_CACHE_DIR, else ~/.cache/sdrt)."
    )
    p.add_argument(
        "model", type=Path, help="the upscaler: .safetensors, or .pth/.pt (read with the weights-only loader)"
    )
    p.add_argument("image", type=Path, help="the image to upscale")
    p.add_argument("-o", "--output", type=Path, required=True, help="PNG path")
    p.add_argument(
        "--scale", type=float, default=None, help="upscale by this, as the web UI (default: one pass of the model)"
    )
    p.add_argument("--width", type=int, default=0, help="with --height: upscale to this size (centred, cropped)")
    p.add_argument("--height", type=int, default=0, help="with --width: upscale to this size (centred, cropped)")
    _tile_args(p, prefix="")
    _backend_args(p, default="onnxruntime")


def _detect_args(p: argparse.ArgumentParser) -> None:
    from sdrt.runtime.preprocessors import MODULES

    p.epilog = f"modules: {', '.join(MODULES)}"
    p.add_argument("module", help="preprocessor, e.g. canny, invert, scribble_xdog, lineart_standard, depth")
    p.add_argument("image", type=Path, help="input image")
    p.add_argument("-o", "--output", type=Path, default=Path("map.png"), help="the map's PNG path (default map.png)")
    p.add_argument("--processor-res", type=int, default=512, help="the preprocessor's working resolution (512)")
    p.add_argument("--threshold-a", type=float, default=None, help="the module's first setting (canny: low)")
    p.add_argument("--threshold-b", type=float, default=None, help="the module's second setting (canny: high)")
    p.add_argument("--mask", type=Path, default=None, help="the inpaint module's mask: white is masked")
    p.add_argument("--seed", type=int, default=0, help="seed of a module that draws (shuffle; default 0)")
    p.add_argument("--annotator-dir", type=Path, default=None, help="annotator models' weights (depth, openpose, ...)")


def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact_dir", type=Path)
    p.add_argument("--json", action="store_true", help="print the whole manifest as JSON")


def _bench_args(p: argparse.ArgumentParser) -> None:
    from sdrt.bench.scenario import SDRT_BACKENDS

    p.description = (
        "Times every sdrt backend and the diffusers baselines on the same weights, alternating run by run in one "
        "process; contenders that cannot run here are listed as skipped, with the reason."
    )
    p.add_argument(
        "path",
        type=Path,
        help="an artifact (from 'sdrt export'; with --model for the torch backend and the baselines), a diffusers "
        "model directory alone (torch backend and baselines only), or a GAN upscaler file (.safetensors, .pth: its "
        "backends against its torch module, one image of --sizes' first size, default 512x512)",
    )
    p.add_argument("--model", type=Path, default=None, help="the model directory the artifact was exported from")
    p.add_argument("--label", default=None, help="the model's name in tables (default: the directory's name)")
    p.add_argument(
        "--backend",
        default=",".join(SDRT_BACKENDS),
        help=f"comma-separated sdrt backends, or none (default {','.join(SDRT_BACKENDS)})",
    )
    p.add_argument(
        "--baseline",
        choices=("diffusers", "none"),
        default="diffusers",
        help="diffusers on the same weights: fp32 on the CPU; fp16 + SDPA, and that with torch.compile, on a GPU",
    )
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile baseline (GPU)")
    p.add_argument("--sizes", default=None, help="WIDTHxHEIGHT list, e.g. 512x512,768x768 (default: tuned size)")
    p.add_argument("--batch", default="1", help="images per generation, e.g. 1,2,4,8 (default 1; clipped to max)")
    p.add_argument("--steps", type=int, default=30, help="denoising steps (default 30)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per scenario (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per contender first (default 1)")
    p.add_argument("--scheduler", type=_sampler, default="dpmpp_2m", help="sampler for all (default dpmpp_2m)")
    p.add_argument("--guidance-scale", type=float, default=7.5, help="guidance scale (default 7.5)")
    p.add_argument(
        "--mode",
        choices=("txt2img", "img2img", "variation", "upscale"),
        default="txt2img",
        help="img2img adds the VAE encoder; variation is unCLIP's (the image encoder conditions); upscale the x4 "
        "upscaler's (a low-res image of a quarter of --sizes in; an x4 model runs it by default)",
    )
    p.add_argument("--strength", type=float, default=0.8, help="img2img strength (default 0.8)")
    p.add_argument(
        "--refiner", type=Path, default=None, help="an SDXL refiner (artifact, or model directory) run after the base"
    )
    p.add_argument("--refiner-model", type=Path, default=None, help="with a refiner artifact: its model directory")
    p.add_argument("--refiner-switch-at", type=float, default=None, help="with --refiner: share of steps the base runs")
    p.add_argument(
        "--controlnet",
        default="",
        help="comma-separated ControlNet artifacts (from 'sdrt export'), or model directories alone (torch backend "
        "and baselines only)",
    )
    p.add_argument("--controlnet-model", default="", help="with ControlNet artifacts: their model directories")
    p.add_argument(
        "--controlnets",
        default=None,
        help="ControlNets per image, one scenario each, e.g. 0,1,2 (default: all given; 0 without --controlnet)",
    )
    p.add_argument(
        "--deep-cache",
        action="append",
        default=[],
        metavar="INTERVAL[:BRANCH]",
        help="also time DeepCache with this setting beside exact on every sdrt backend, e.g. 3 or 3:1 (branch default "
        "0); repeat it or give a comma list (3,5) for several",
    )
    p.add_argument("--device", default="auto", help="auto (cuda when there is a GPU), cpu or cuda[:N]")
    p.add_argument("--no-cold-start", action="store_true", help="skip the fresh-process cold starts and builds")
    p.add_argument("--json", type=Path, default=None, help="write one JSON record per scenario here")
    p.add_argument("--plot", type=Path, default=None, help="write a PNG chart here")
    _tile_args(p, prefix="upscaler-")


def _doctor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.epilog = (
        "endpoints: POST /v1/generate, /sdapi/v1/txt2img, /sdapi/v1/img2img, /v1/images/generations; GET "
        "/sdapi/v1/samplers, /sdapi/v1/sd-models, /sdapi/v1/options, /health, /ready, /metrics; the ControlNet "
        "extension's /controlnet/* (with --controlnet-dir)"
    )
    p.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="ARTIFACT",
        help="artifact directories (or, with --backend torch, diffusers model directories), each a model clients "
        "choose by its directory's name; the first is the default",
    )
    p.add_argument(
        "--model-dir",
        dest="models_dir",
        type=Path,
        default=None,
        help="a directory whose subdirectories are artifacts, each served under its name (rescanned by POST "
        "/sdapi/v1/refresh-checkpoints); without ARTIFACTs its first by name is the default",
    )
    p.add_argument(
        "--max-loaded-models",
        type=int,
        default=1,
        help="most models loaded at once (least recently used leave first; default 1, as the web UI)",
    )
    p.add_argument(
        "--max-model-memory",
        type=float,
        default=None,
        metavar="GIB",
        help="most GiB of model weights loaded at once (default 80%% of the GPU's memory, or of the host's available "
        "memory on the CPU)",
    )
    _backend_args(p, default="onnxruntime")
    p.add_argument(
        "--refiner",
        type=Path,
        default=None,
        help="an SDXL refiner artifact: loaded with each model it refines; requests with refiner_switch_at use it",
    )
    _extra_network_args(p, refit_flag="--refit-model-dir")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860, the web UI's)")
    p.add_argument(
        "--max-batch", type=int, default=None, help="most images per engine batch (default: the artifact's max batch)"
    )
    p.add_argument(
        "--max-wait-ms", type=float, default=50.0, help="longest a request waits for others to batch with (default 50)"
    )
    p.add_argument(
        "--max-queue", type=int, default=64, help="most requests waiting; beyond it 429 + Retry-After (default 64)"
    )
    p.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body in MiB (default 16)")
    p.add_argument("--max-prompt-chars", type=int, default=4000, help="longest prompt in characters (default 4000)")
    p.add_argument(
        "--default-steps",
        type=int,
        default=None,
        help="steps when a request gives none (OpenAI's API; default: the model family's, 30, unCLIP 20)",
    )
    p.add_argument("--max-steps", type=int, default=150, help="most denoising steps per request (default 150)")
    p.add_argument("--max-images", type=int, default=16, help="most images per request (default 16)")
    p.add_argument("--max-control-units", type=int, default=3, help="most ControlNet units per request (default 3)")
    p.add_argument(
        "--warm-shapes",
        nargs="+",
        default=(),
        metavar="WxH:B[,B...]",
        help="capture each engine's CUDA graphs (or compile OpenVINO's static models) at load for these sizes and "
        "batches, e.g. 512x512:1,2,4, so no served batch pays for it",
    )
    p.add_argument("--styles", metavar="CSV", help="prompt styles for the web UI API: a web UI styles.csv")
    p.add_argument("--ray", action="store_true", help="deploy on Ray Serve (pip install 'sdrt[serve-ray]')")
    p.add_argument("--ray-address", default=None, help="Ray cluster to join, e.g. auto (default: start one here)")
    p.add_argument("--replicas", type=int, default=1, help="with --ray: replicas (default 1; one per GPU on CUDA)")
    p.add_argument("--min-replicas", type=int, default=None, help="with --ray and --max-replicas: autoscaling floor")
    p.add_argument("--max-replicas", type=int, default=None, help="with --ray: autoscale up to this many replicas")
    p.add_argument(
        "--target-ongoing-requests",
        type=float,
        default=None,
        help="with --ray autoscaling: requests per replica to scale at (default twice the batch size)",
    )


# command -> its one-line help and the function that adds its arguments
_ARGUMENTS = {
    "demo-model": ("write a random-weight SD 1.x/2.x/SDXL model in diffusers layout", _demo_model_args),
    "export": ("export a diffusers model directory or a single-file checkpoint to ONNX", _export_args),
    "build": ("prepare engines for a backend under ARTIFACT_DIR/engines/<backend>/", _build_args),
    "generate": (
        "text-to-image, image-to-image (--image), inpainting (--image --mask), or unCLIP variations (--image)",
        _generate_args,
    ),
    "upscale": (
        "upscale an image with a GAN upscaler file (ESRGAN, Real-ESRGAN, SwinIR), on any backend",
        _upscale_args,
    ),
    "detect": ("run a ControlNet preprocessor (module) on an image: the map a ControlNet reads", _detect_args),
    "info": ("print an artifact's summary: family, networks, sizes, engines built (--json: the manifest)", _info_args),
    "bench": (
        "time sdrt's backends against diffusers on the same weights: stages, throughput, cold start, memory",
        _bench_args,
    ),
    "doctor": ("print the GPU, CUDA, TensorRT and ONNX Runtime here, and which backends can run", _doctor_args),
    "serve": ("HTTP server: batches concurrent requests; sdrt, web UI (/sdapi/v1) and OpenAI image APIs", _serve_args),
}


def _param_args(p: argparse.ArgumentParser, params: ParamSet) -> None:
    """A flag per request parameter (`sdrt.params`): an object's fields as --NAME-FIELD flags, unless it parses text."""
    for param in params:
        if param.type == "object" and param.parse is None:
            for field in param.fields:
                flag = f"--{param.name}-{field.name.replace('_', '-')}"
                p.add_argument(flag, dest=f"{param.name}__{field.name}", type=_cli_type(field), default=None,
                               metavar=field.name.upper(), help=field.help)  # fmt: skip
            continue
        if param.cli_flag is None or param.type == "vector":
            continue
        if param.type == "bool":
            p.add_argument(param.cli_flag, dest=param.name, action="store_true", default=None, help=param.help)
            continue
        action = "append" if param.many else "store"
        metavar = param.cli_flag.lstrip("-").replace("-", "_").upper()
        p.add_argument(
            param.cli_flag, dest=param.name, type=_cli_type(param), action=action, default=None, metavar=metavar,
            help=param.help,
        )  # fmt: skip


def _param_values(args: argparse.Namespace, params: ParamSet) -> dict:
    """The request parameters given on the command line (those not given take the pipeline's defaults)."""
    values = {}
    for param in params:
        if param.type == "object" and param.parse is None:
            given = {f.name: getattr(args, f"{param.name}__{f.name}") for f in param.fields}
            given = {k: v for k, v in given.items() if v is not None}
            if given:
                values[param.name] = given
        elif param.cli_flag is not None and getattr(args, param.name, None) is not None:
            values[param.name] = getattr(args, param.name)
    return values


def _cli_type(param: Param):
    """argparse type of a parameter: numbers, text, image paths; a sampler name becomes sdrt's."""
    if param.parse is not None:
        parse = param.parse

        def parsed(text: str):
            try:
                return parse(text)
            except ValueError as exc:  # argparse would say only "invalid value"
                raise argparse.ArgumentTypeError(str(exc)) from None

        return parsed
    if param.name in ("scheduler", "sampler"):
        return _sampler
    return {"int": int, "float": float, "floats": float, "image": Path}.get(param.type, str)


def _lora_arg(value: str) -> tuple[Path, float, float]:
    """argparse type: FILE, FILE:WEIGHT or FILE:TE_WEIGHT:UNET_WEIGHT."""
    weights: list[float] = []
    path = value
    while len(weights) < 2:
        head, _, tail = path.rpartition(":")
        try:
            number = float(tail)
        except ValueError:
            break
        if not head:
            break
        weights.insert(0, number)
        path = head
    te = weights[0] if weights else 1.0
    return Path(path), te, weights[1] if len(weights) > 1 else te


def _hypernetwork_arg(value: str) -> tuple[Path, float]:
    """argparse type: FILE or FILE:MULTIPLIER."""
    path, _, multiplier = value.rpartition(":")
    if path:
        try:
            return Path(path), float(multiplier)
        except ValueError:
            pass
    return Path(value), 1.0


def _sampler(value: str) -> str:
    """argparse type: a sampler name or web UI label, as sdrt's name."""
    try:
        return str(canonical_sampler(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _extra_network_args(p: argparse.ArgumentParser, refit_flag: str = "--model-dir") -> None:
    p.add_argument(
        "--lora-dir",
        type=Path,
        default=None,
        help="LoRA and LyCORIS files (.safetensors) prompts name as <lora:name:weight> or <lora:name:te:unet>, fused "
        f"per request (torch backend, or tensorrt engines built with --refit and {refit_flag})",
    )
    p.add_argument(
        refit_flag,
        dest="model_dir",
        type=Path,
        default=None,
        help="tensorrt with --lora-dir: the model the artifact was exported from (LoRAs are fused into its weights)",
    )
    p.add_argument(
        "--embeddings-dir",
        type=Path,
        default=None,
        help="textual-inversion embeddings (.pt, .safetensors, .bin, the web UI's .png/.webp), used where a prompt "
        "names one",
    )
    p.add_argument(
        "--hypernetwork-dir",
        type=Path,
        default=None,
        help="web UI hypernetworks (.pt) prompts name as <hypernet:name:multiplier>, run per request (torch backend)",
    )
    p.add_argument(
        "--controlnet-dir",
        type=Path,
        default=None,
        help="ControlNet artifacts (each subdirectory one, from 'sdrt export CONTROLNET'), which --control and "
        "requests name by directory name",
    )
    p.add_argument(
        "--annotator-dir",
        type=Path,
        default=None,
        help="annotator models' weights for ControlNet modules such as depth and openpose (never downloaded)",
    )

    p.add_argument(
        "--upscaler-dir",
        type=Path,
        default=None,
        help="GAN upscaler files (ESRGAN, Real-ESRGAN, SwinIR: .safetensors, .pth) a hires fix or the web UI's extras "
        "name by file stem",
    )
    _tile_args(p, prefix="upscaler-")
    p.add_argument(
        "--vae-tiling",
        choices=("auto", "on", "off"),
        default=None,
        help="decode and encode in tiles, as diffusers' vae.enable_tiling(): auto (default: images over a megapixel "
        "or beyond the VAE's profile), on (anything over one tile) or off",
    )


def _tile_args(p: argparse.ArgumentParser, prefix: str) -> None:
    p.add_argument(
        f"--{prefix}tile", type=int, default=192, help="GAN upscaler tile side in input pixels; 0: whole images (192)"
    )
    p.add_argument(f"--{prefix}tile-overlap", type=int, default=8, help="pixels neighbouring tiles share (default 8)")


def _load_options(args: argparse.Namespace, upscalers: bool = True) -> dict:
    """Pipeline.load's extra-network directories, as given, and the upscalers of --upscaler-dir (as a directory,
    `upscaler_dir`, when not `upscalers`: Ray replicas open it themselves)."""
    names = ("embeddings_dir", "lora_dir", "model_dir", "hypernetwork_dir", "controlnet_dir", "annotator_dir")
    options = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    if getattr(args, "vae_tiling", None) is not None and upscalers:  # (Ray: an engine option, not a directory)
        options["vae_tiling"] = args.vae_tiling
    if getattr(args, "upscaler_dir", None) is not None and not upscalers:
        options["upscaler_dir"] = args.upscaler_dir
    elif getattr(args, "upscaler_dir", None) is not None:
        from sdrt.export.upscalers import open_library
        from sdrt.upscalers import Tiling

        tiling = Tiling(args.upscaler_tile, args.upscaler_tile_overlap)
        options["upscalers"] = open_library(
            args.upscaler_dir, args.backend, args.device, tiling, **_backend_options(args)
        )
    return options


def _backend_args(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--backend", choices=list(BACKENDS), default=default, help=f"engine backend (default {default})")
    p.add_argument("--device", default="cpu", help=f"{' or '.join(DEVICES)}[:N] (default cpu)")
    p.add_argument(
        "--dtype",
        default=None,
        help="torch backend: text encoder and UNet compute dtype, float32, float16 or bfloat16 "
        "(default float16 on cuda, float32 on cpu)",
    )
    p.add_argument(
        "--compile", action="store_true", default=None, help="torch backend: torch.compile the UNet (slow first call)"
    )
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        default=None,
        help="torch or onnxruntime on cuda: replay the UNet step as a CUDA graph per input shape",
    )
    p.add_argument(
        "--max-cuda-graphs",
        type=int,
        default=None,
        metavar="N",
        help="with --cuda-graphs (tensorrt: always): CUDA graphs kept per engine, least recently used dropped "
        "(default 8)",
    )
    p.add_argument(
        "--tf32",
        action="store_true",
        default=None,
        help="on cuda: let float32 math use TF32 (faster, not float32-exact; off by default)",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="engine cache outside the artifact, so the artifact may be read-only (default $SDRT_CACHE_DIR, "
        "else ARTIFACT/engines); engines prebuilt in the artifact are still used",
    )


# backend option flags, passed to the backend only when given (a backend refuses options it does not have)
_BACKEND_OPTIONS = ("dtype", "compile", "cuda_graphs", "max_cuda_graphs", "tf32", "optimization", "cache_dir")


def _backend_options(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in _BACKEND_OPTIONS if getattr(args, name, None) is not None}


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser(argv).parse_args(argv)
    args.started = started
    _configure_logging(args.verbose, args.quiet)
    try:
        return _COMMANDS[args.command](args)
    except ValueError as exc:
        print(f"sdrt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _demo_model(args: argparse.Namespace) -> int:
    from sdrt.demo import resolve_variant, write_demo_model

    quiet_third_party()
    write_demo_model(args.out_dir, seed=args.seed, preset=args.preset, variant=args.variant)
    variant = resolve_variant(args.preset, args.variant)
    print(f"wrote a random-weight model (preset {args.preset}, variant {variant}) to {args.out_dir}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from sdrt.export import ExportConfig, export_model
    from sdrt.model_source import SourceOptions

    quiet_third_party()
    config = ExportConfig(
        max_batch=args.max_batch,
        min_size=args.min_size,
        max_size=args.max_size,
        opt_size=args.opt_size,
        max_text_chunks=args.max_text_chunks,
        opset=args.opset,
        precision=args.precision,
        vae_precision=args.vae_precision,
        tiling=args.tiling,
        deep_cache=args.deep_cache,
    )
    source = SourceOptions(
        prediction_type=args.prediction_type, config_dir=args.config, allow_pickle=args.allow_pickle, vae=args.vae,
        loras=tuple(args.lora), hypernetworks=tuple(args.hypernetwork),
    )  # fmt: skip
    manifest = export_model(
        args.model_dir, args.output, config, overwrite=args.overwrite, progress=not args.quiet, source=source
    )
    r = manifest.ranges
    print(
        f"exported {args.model_dir} ({manifest.family}) to {args.output}: "
        f"{', '.join(manifest.components)}; batch 1..{r.max_batch}, sizes {r.min_size}..{r.max_size} px"
        + (f"; DeepCache branches {', '.join(map(str, manifest.deep_cache_branches))}" if manifest.deep_cache else "")
    )
    return 0


def _branch_ids(text: str) -> tuple[int, ...]:
    """--deep-cache's value: branch ids separated by commas ("0" or "0,1")."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of branch ids (e.g. 0 or 0,1)"
        ) from None


def _build(args: argparse.Namespace) -> int:
    from sdrt.engines import build_engines
    from sdrt.manifest import read_manifest

    options = _backend_options(args)
    if args.profile is not None:
        options["profile"] = args.profile
    if args.timing_cache is not None:
        options["timing_cache"] = str(args.timing_cache)
    if args.refit:
        options["refit"] = True
    manifest = read_manifest(args.artifact_dir)
    records = build_engines(args.artifact_dir, manifest, args.backend, args.device, **options)
    for branch in manifest.deep_cache_branches:  # DeepCache's graphs (sdrt export --deep-cache), built alike
        networks = manifest.deep_cache_networks(branch)
        records += build_engines(args.artifact_dir, networks, args.backend, args.device, **options)
    for r in records:
        state = "reused" if r.reused else f"built in {r.seconds:.1f} s"
        print(f"{r.component:<14} {state:<18} {r.path}")
    if not records:
        print(f"backend {args.backend} needs no build")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from sdrt import Pipeline
    from sdrt.runtime.images import save_png
    from sdrt.runtime.params import all_params

    quiet_third_party()
    if args.preview_every is not None and args.preview_every < 1:
        raise ValueError(f"--preview-every {args.preview_every} must be at least 1")
    if args.refiner_switch_at is not None and args.refiner is None:
        raise ValueError("--refiner-switch-at needs --refiner REFINER_ARTIFACT")
    wall = {"start (imports)": time.perf_counter() - args.started}
    pipe = Pipeline.load(
        args.path, backend=args.backend, device=args.device, refiner=args.refiner, **_load_options(args),
        **_backend_options(args),
    )  # fmt: skip
    wall["load"] = time.perf_counter() - args.started - sum(wall.values())
    engines = sum(model.engines_seconds for model in pipe.models)
    if args.prompt is None:
        if "variation" not in pipe.family.modes:
            raise ValueError(f'a {pipe.family.description} needs a PROMPT; give "" to generate from the empty prompt')
        args.prompt = ""
    preview = None
    if args.preview_every is not None:
        from sdrt.runtime.previews import PreviewWriter

        preview_dir = args.preview_dir or args.output.parent / f"{args.output.stem}-previews"
        preview = PreviewWriter(preview_dir, prefix=args.output.stem, factors=pipe.family.latent_rgb)
    result = pipe.generate(
        args.prompt,
        callback=preview,
        callback_steps=args.preview_every or 1,
        progress=not args.quiet,
        **_param_values(args, all_params()),
    )
    wall["generate"] = time.perf_counter() - args.started - sum(wall.values())
    if preview is not None:
        print(f"wrote previews every {args.preview_every} steps to {preview_dir}")
    for i, (image, parameters, seed) in enumerate(zip(result.images, result.parameters, result.seeds, strict=True)):
        out = (
            args.output
            if len(result.images) == 1
            else args.output.with_name(f"{args.output.stem}-{i}{args.output.suffix}")
        )
        save_png(image, out, parameters)
        print(f"wrote {out} (seed {seed})")
    wall["save"] = time.perf_counter() - args.started - sum(wall.values())
    if not args.quiet:
        print(result.timings.table())
        notes = {"load": f" (engines {engines:.2f} s: verified, built where missing, opened)"}
        stages = ", ".join(f"{name} {seconds:.2f} s{notes.get(name, '')}" for name, seconds in wall.items())
        print(f"wall time: {stages}; total {sum(wall.values()):.2f} s")
    return 0


def _upscale(args: argparse.Namespace) -> int:
    from sdrt.export.upscalers import open_library
    from sdrt.files import atomic_file
    from sdrt.runtime import extras
    from sdrt.runtime.image_inputs import open_image
    from sdrt.upscalers import Tiling
    from sdrt.upscalers.models import SUFFIXES

    quiet_third_party()
    if args.model.suffix.lower() not in SUFFIXES or not args.model.is_file():
        raise ValueError(f"upscaler {args.model} is not a {', '.join(SUFFIXES)} file")
    image = open_image(args.image, "image")
    library = open_library(args.model.parent, args.backend, args.device, Tiling(args.tile, args.tile_overlap),
                           **_backend_options(args))  # fmt: skip
    upscaler = library.get(args.model.stem)
    upscaler.progress = True
    if args.scale is None and not args.width:
        result, info = upscaler.run(image), {"Postprocess upscale by": str(upscaler.scale)}
        info["Postprocess upscaler"] = upscaler.name
    else:
        request = extras.ExtrasUpscale(upscaler.name, args.scale or 1.0, args.width, args.height)
        result, info = extras.upscale(image, request, library)
    with atomic_file(args.output) as tmp:
        from PIL.PngImagePlugin import PngInfo

        chunk = PngInfo()
        chunk.add_text("postprocessing", extras.infotext(info))
        result.save(tmp, format="PNG", pnginfo=chunk)
    print(f"wrote {args.output} ({result.width}x{result.height}, {extras.infotext(info)})")
    return 0


def _detect(args: argparse.Namespace) -> int:
    from sdrt.runtime.image_inputs import open_image
    from sdrt.runtime.images import save_png
    from sdrt.runtime.preprocessors import detect

    image = open_image(args.image, "image")
    mask = None if args.mask is None else open_image(args.mask, "mask")
    found = detect(
        args.module, image, args.processor_res, args.threshold_a, args.threshold_b, mask=mask, seed=args.seed,
        annotator_dir=args.annotator_dir,
    )  # fmt: skip
    save_png(found, args.output, f"ControlNet module: {args.module}")
    print(f"wrote {args.output} ({found.width}x{found.height}, {args.module})")
    return 0


def _info(args: argparse.Namespace) -> int:
    if args.json:
        from sdrt.manifest import read_manifest

        print(json.dumps(read_manifest(args.artifact_dir).to_json(), indent=2))
        return 0
    print(_summary(args.artifact_dir))
    return 0


def _summary(root: Path) -> str:
    """An artifact at a glance, read from its manifest as data (no torch: the summary comes at once)."""
    from sdrt.files import read_json_object

    data = read_json_object(root / "manifest.json")  # sdrt.manifest.MANIFEST_NAME, the deployment contract
    r, versions = data.get("ranges", {}), data.get("versions", {})
    networks = data.get("components", {})
    lines = [
        f"artifact  {root} (manifest format {data.get('format_version')}, exported by sdrt {versions.get('sdrt')})",
        f"family    {data.get('family')}, predicts {data.get('prediction_type')}"
        + (", inpainting" if data.get("inpainting") else ""),
        f"networks  {', '.join(f'{name} {_mb(root / name)}' for name in networks)}",
        f"sizes     {r.get('min_size')}..{r.get('max_size')} px, tuned for {r.get('opt_size')}; batch 1.."
        f"{r.get('max_batch')}; prompts up to {r.get('max_text_chunks')} x 75 tokens",
    ]
    vae = data.get("vae") or {}
    if vae:
        lines.append(f"vae       swapped at export: {vae.get('name', vae)}")
    for lora in data.get("loras") or ():
        lines.append(f"lora      fused at export: {lora.get('name')} weight {lora.get('weight')}")
    engines = root / "engines"
    built = sorted(p for p in engines.iterdir() if p.is_dir()) if engines.is_dir() else []
    for backend in built:
        names = sorted(p.name for p in backend.iterdir() if p.is_dir())
        lines.append(f"engines   {backend.name}: {', '.join(names)} ({_mb(backend)})")
    if not built:
        lines.append("engines   none built yet: sdrt build ARTIFACT --backend onnxruntime (or tensorrt, openvino)")
    lines.append(f"on disk   {_mb(root)} in all")
    return "\n".join(lines)


def _mb(path: Path) -> str:
    files = [path] if path.is_file() else path.rglob("*")
    return f"{sum(f.stat().st_size for f in files if f.is_file()) / 1e6:.1f} MB"


def _bench(args: argparse.Namespace) -> int:
    from sdrt.bench import BASELINES, BenchConfig, format_table, plot, run_bench, write_json
    from sdrt.bench.scenario import parse_deep_caches, parse_ints, parse_size
    from sdrt.upscalers.models import SUFFIXES

    quiet_third_party()
    backends = () if args.backend == "none" else tuple(b.strip() for b in args.backend.split(",") if b.strip())
    if args.path.is_file() and args.path.suffix.lower() in SUFFIXES:
        if args.deep_cache:
            raise ValueError(f"--deep-cache is for diffusion models; {args.path} is a GAN upscaler")
        return _bench_upscaler(args, backends)
    baselines = () if args.baseline == "none" else ("diffusers",) if args.no_compile else BASELINES
    controlnets = tuple(Path(p.strip()) for p in args.controlnet.split(",") if p.strip())
    controlnet_models = tuple(Path(p.strip()) for p in args.controlnet_model.split(",") if p.strip())
    if args.controlnets is not None:
        counts = parse_ints("--controlnets", args.controlnets)
    else:
        counts = (max(len(controlnets), len(controlnet_models)),)
    config = BenchConfig(
        path=args.path,
        model=args.model,
        label=args.label,
        backends=backends,
        baselines=baselines,
        sizes=None if args.sizes is None else tuple(parse_size(s) for s in args.sizes.split(",") if s.strip()),
        batches=parse_ints("--batch", args.batch),
        steps=args.steps,
        runs=args.runs,
        warmup=args.warmup,
        scheduler=args.scheduler,
        guidance_scale=args.guidance_scale,
        mode=args.mode,
        strength=args.strength,
        refiner=args.refiner,
        refiner_model=args.refiner_model,
        refiner_switch_at=args.refiner_switch_at,
        controlnets=controlnets,
        controlnet_models=controlnet_models,
        control_counts=counts,
        deep_caches=parse_deep_caches(args.deep_cache),
        device=args.device,
        cold_start=not args.no_cold_start,
    )
    result = run_bench(config)
    result.command = config.command()
    print(format_table(result))
    if args.json is not None:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    if args.plot is not None:
        plot(result.records, args.plot)
        print(f"wrote {args.plot}")
    for failure in result.failures():
        print(f"sdrt bench: failed: {failure}", file=sys.stderr)
    return 1 if result.failures() else 0


def _bench_upscaler(args: argparse.Namespace, backends: tuple[str, ...]) -> int:
    from sdrt.bench.run import resolve_device
    from sdrt.bench.scenario import parse_size
    from sdrt.bench.upscalers import bench_upscaler, format_upscaler_table

    size = (512, 512) if args.sizes is None else parse_size(args.sizes.split(",")[0])
    records = bench_upscaler(
        args.path, backends, resolve_device(args.device), size, runs=args.runs, warmup=args.warmup,
        tile=args.upscaler_tile, overlap=args.upscaler_tile_overlap,
    )  # fmt: skip
    print(format_upscaler_table(args.path, records, size))
    if args.json is not None:
        from sdrt.files import atomic_file

        with atomic_file(args.json) as tmp:
            Path(tmp).write_text(json.dumps({"size": size, "records": [r.to_json() for r in records]}, indent=2))
        print(f"wrote {args.json}")
    failed = [r for r in records if r.status == "failed"]
    for record in failed:
        print(f"sdrt bench: failed: {record.contender}: {record.reason}", file=sys.stderr)
    return 1 if failed else 0


def _doctor(args: argparse.Namespace) -> int:
    from sdrt.doctor import diagnose, format_report, header, to_json

    if not args.json:
        print(header(), flush=True)  # at once; the rest waits for torch and the libraries to load
    report = diagnose()
    print(json.dumps(to_json(report), indent=2) if args.json else format_report(report, header_line=False))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from sdrt.engines.cuda_graphs import DEFAULT_MAX_GRAPHS
    from sdrt.serve import ServeConfig
    from sdrt.serve.config import parse_warm_shapes
    from sdrt.serve.styles import read_styles

    if not args.paths and args.models_dir is None:
        raise ValueError("give the artifacts to serve, or a directory of them with --model-dir")
    if args.model_dir is not None and len(args.paths) + (args.models_dir is not None) > 1:
        raise ValueError("--refit-model-dir is the source of one artifact: serve that artifact alone with it")
    if args.max_loaded_models < 1:
        raise ValueError(f"--max-loaded-models {args.max_loaded_models} must be at least 1")
    if args.max_model_memory is not None and args.max_model_memory <= 0:
        raise ValueError(f"--max-model-memory {args.max_model_memory} GiB must be positive")
    memory = None if args.max_model_memory is None else int(args.max_model_memory * 1024**3)

    quiet_third_party()
    options = _backend_options(args)
    warm = parse_warm_shapes(args.warm_shapes)
    kept = options.get("max_cuda_graphs", DEFAULT_MAX_GRAPHS)
    if len(warm) > kept:
        raise ValueError(
            f"--warm-shapes names {len(warm)} shapes, but engines keep at most {kept} CUDA graphs each; "
            f"raise --max-cuda-graphs to {len(warm)}"
        )
    config = ServeConfig(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        max_prompt_chars=args.max_prompt_chars,
        default_steps=args.default_steps,
        max_steps=args.max_steps,
        max_images=args.max_images,
        max_control_units=args.max_control_units,
        warm_shapes=warm,
        styles=() if args.styles is None else read_styles(args.styles),
    )
    if not args.ray:
        from sdrt.serve.server import serve

        return serve(
            args.paths, args.backend, args.device, args.host, args.port, config, refiner=args.refiner,
            models_dir=args.models_dir, max_loaded=args.max_loaded_models, max_bytes=memory,
            **options, **_load_options(args),
        )  # fmt: skip
    try:
        from sdrt.serve import ray_app
    except ImportError as exc:
        raise ValueError(f"--ray needs Ray Serve: pip install 'sdrt[serve-ray]' ({exc})") from exc
    ray_options = ray_app.RayOptions(
        replicas=args.replicas,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        target_ongoing_requests=args.target_ongoing_requests,
    )
    if args.vae_tiling is not None:
        options["vae_tiling"] = args.vae_tiling
    app = ray_app.deployment(
        args.paths, args.backend, args.device, config, ray_options, refiner=args.refiner, engine_options=options,
        models_dir=args.models_dir, max_loaded=args.max_loaded_models, max_bytes=memory,
        **_load_options(args, upscalers=False),
    )  # fmt: skip
    return ray_app.run(app, args.host, args.port, address=args.ray_address)


def _configure_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("sdrt").setLevel(level)


_COMMANDS = {
    "demo-model": _demo_model,
    "export": _export,
    "build": _build,
    "generate": _generate,
    "upscale": _upscale,
    "detect": _detect,
    "info": _info,
    "bench": _bench,
    "doctor": _doctor,
    "serve": _serve,
}

if __name__ == "__main__":
    sys.exit(main())
