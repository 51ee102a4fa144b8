"""The SD x4 upscaler at its published sizes (random weights): a 512x512 image to 2048x2048 on this machine.

Writes the full-size model once (`sdrt demo-model DIR --preset x4`, 2.5 GB), then upscales one 512x512 image on the
torch backend (the model directory itself; no export) with the VAE decoding in tiles (vae_tiling auto: 2048x2048
is over its megapixel budget), and prints the stage timings, the peak resident memory of the process and whether
the decoder ran tiled. The UNet runs at 512x512 latents (the low-res image's size), the VAE decodes 512x512
latents in 64-latent tiles.

    .venv/bin/python -m benchmarks.x4_full_size [--model models/x4] [--steps 2] [--guidance 9] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
from PIL import Image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/x4"), help="written here when missing")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps (default 2; diffusers' default is 75)")
    parser.add_argument("--guidance", type=float, default=9.0, help="guidance scale (default 9: a CFG batch of 2)")
    parser.add_argument("--size", type=int, default=512, help="the low-res image's side (default 512)")
    parser.add_argument("--vae-tiling", default="auto", choices=("auto", "on", "off"))
    parser.add_argument("--json", type=Path, default=None, help="write the record here")
    args = parser.parse_args(argv)

    from sdrt import Pipeline
    from sdrt.demo import write_demo_model
    from sdrt.spec import ShapeRanges

    if not (args.model / "model_index.json").is_file():
        started = time.perf_counter()
        write_demo_model(args.model, preset="x4", variant="upscaler_x4")
        print(f"wrote the full-size x4 upscaler to {args.model} in {time.perf_counter() - started:.0f} s")
    started = time.perf_counter()
    ranges = ShapeRanges(max_batch=1, min_size=64, max_size=4 * args.size, opt_size=4 * args.size, latent_factor=4)
    pipe = Pipeline.load(args.model, backend="torch", ranges=ranges, vae_tiling=args.vae_tiling)
    load = time.perf_counter() - started
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((args.size, args.size))
    started = time.perf_counter()
    result = pipe.generate("a photo of a cat", image=small, num_inference_steps=args.steps,
                           guidance_scale=args.guidance, seed=0, progress=True)  # fmt: skip
    total = time.perf_counter() - started
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    decoder = pipe.engines["vae_decoder"]
    record = {
        "input": f"{args.size}x{args.size}",
        "output": "x".join(str(v) for v in result.images[0].size),
        "steps": args.steps,
        "guidance_scale": args.guidance,
        "vae_tiled": bool(decoder.tiled_calls),
        "load_s": round(load, 1),
        "generate_s": round(total, 1),
        "stages_ms": {name: round(seconds * 1000) for name, seconds in result.timings.rows()},
        "peak_rss_gib": round(peak_gib, 2),
    }
    print(result.timings.table())
    print(json.dumps(record, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
