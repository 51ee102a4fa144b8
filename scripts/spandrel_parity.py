"""Check sdrt's upscaler architectures against spandrel's on the same files, where spandrel imports.

spandrel (the library the web UI and ComfyUI load upscalers with) needs torchvision, which cannot be installed
beside sdrt's CPU torch, so the check runs in two Python environments:

    .venv/bin/python scripts/spandrel_parity.py write DIR [--preset full]  # sdrt: random files of every
                                                              # architecture, layout and format, an input, and
                                                              # sdrt's outputs ("full": the published sizes)
    OTHER/bin/python scripts/spandrel_parity.py check DIR     # spandrel (any torch + torchvision): loads each
                                                              # file itself, runs it, compares

`check` imports no sdrt code: spandrel detects each file's architecture and scale on its own. It prints the
largest difference per file and exits 1 when spandrel disagrees on architecture or scale, or any output differs
by more than 1e-4. Each file runs on a 24x32 input and a 21x30 one (which both pad to what the network takes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

CASES = [  # (architecture, layout, scale, suffix)
    ("ESRGAN", "original", 4, ".pth"),
    ("ESRGAN", "bsrgan", 4, ".safetensors"),
    ("ESRGAN", "realesrgan", 4, ".pth"),
    ("ESRGAN", "realesrgan", 2, ".pth"),
    ("ESRGAN", "realesrgan", 1, ".safetensors"),
    ("Compact", "realesrgan", 4, ".pth"),
    ("Compact", "realesrgan", 2, ".safetensors"),
    ("SwinIR", "swinir", 4, ".pth"),
    ("SwinIR", "swinir", 2, ".safetensors"),
]
TOLERANCE = 1e-4


def write(directory: Path, preset: str) -> None:
    from safetensors.torch import save_file

    from sdrt.demo.upscalers import write_upscaler
    from sdrt.upscalers import Tiling, Upscaler, load_upscaler
    from sdrt.upscalers.library import torch_engines

    directory.mkdir(parents=True, exist_ok=True)
    image = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(0))
    odd = torch.rand(1, 3, 21, 30, generator=torch.Generator().manual_seed(1))  # padded to the network's multiple
    outputs, cases = {"input": image, "odd input": odd}, []
    for i, (architecture, layout, scale, suffix) in enumerate(CASES):
        path = write_upscaler(directory / f"{i}-{architecture}-{layout}-x{scale}{suffix}", architecture, layout,
                              preset=preset, scale=scale, seed=i)  # fmt: skip
        model = load_upscaler(path)
        with torch.no_grad():
            outputs[path.name] = model.module()(image).contiguous()
        outputs[f"{path.name} odd"] = Upscaler(model.name, torch_engines()(model), Tiling(tile=0))(odd).contiguous()
        cases.append({"file": path.name, "architecture": architecture, "scale": model.scale})
    save_file(outputs, str(directory / "sdrt-outputs.safetensors"))
    (directory / "cases.json").write_text(json.dumps(cases, indent=1))


def check(directory: Path) -> int:
    import spandrel
    from safetensors.torch import load_file

    expected = load_file(str(directory / "sdrt-outputs.safetensors"))
    failed = 0
    print(f"spandrel {spandrel.__version__}, torch {torch.__version__}")
    for case in json.loads((directory / "cases.json").read_text()):
        loaded = spandrel.ModelLoader().load_from_file(str(directory / case["file"]))
        diff = 0.0
        for key, image in ((case["file"], expected["input"]), (f"{case['file']} odd", expected["odd input"])):
            with torch.no_grad():
                got = loaded.model.eval()(image)
            want = expected[key]
            diff = max(diff, (got - want).abs().max().item() if got.shape == want.shape else float("inf"))
        same = loaded.architecture.id == case["architecture"] and loaded.scale == case["scale"]
        ok = same and diff <= TOLERANCE
        failed += not ok
        print(f"{case['file']:40s} spandrel: {loaded.architecture.id} x{loaded.scale}  max |diff| {diff:.2e}  "
              f"{'ok' if ok else 'MISMATCH'}")  # fmt: skip
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("write", "check"))
    parser.add_argument("directory", type=Path)
    parser.add_argument("--preset", choices=("tiny", "full"), default="tiny", help="write: the files' sizes")
    args = parser.parse_args(argv)
    if args.mode == "write":
        write(args.directory, args.preset)
        return 0
    return check(args.directory)


if __name__ == "__main__":
    sys.exit(main())
