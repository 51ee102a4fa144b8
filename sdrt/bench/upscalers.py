"""`sdrt bench UPSCALER_FILE`: a GAN upscaler on sdrt's backends against the torch module it was exported from.

Every contender upscales the same image in the same tiles (the web UI's 192/8 unless asked otherwise), so the
comparison is the networks' cost: the baseline ("torch-module") calls the file's own `nn.Module` on each tile,
sdrt's backends call their engines (onnxruntime and openvino run the ONNX export, made once into the cache
first and timed apart as "prepare"; torch runs the module through sdrt's torch engine). Contenders alternate run
by run in one process, and each one's image is compared with the baseline's (max difference in 8-bit levels).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sdrt.bench.runners import init_image

BASELINE = "torch-module"


@dataclass
class UpscalerRecord:
    """One contender's timed runs (seconds), or why it did not run."""

    contender: str
    status: str = "ok"  # "ok", "skipped" (cannot run here) or "failed"
    reason: str | None = None
    prepare_seconds: float = 0.0  # export (first time) and engine load
    seconds: list[float] = field(default_factory=list)
    output_size: tuple[int, int] | None = None
    max_diff: int | None = None  # largest 8-bit difference from the baseline's image

    @property
    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__} | {"median_seconds": self.median}


class _ModuleCall:
    """The upscaler's own torch module speaking the engine protocol (spec and ranges of sdrt's torch engine)."""

    def __init__(self, module: torch.nn.Module, like: Any) -> None:
        self.module = module
        self.spec, self.ranges, self.device = like.spec, like.ranges, like.device

    def __call__(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            return {"upscaled": self.module(feeds["image"])}


def bench_upscaler(
    path: str | Path,
    backends: Sequence[str] = ("onnxruntime", "openvino", "torch", "tensorrt"),
    device: str = "cpu",
    size: tuple[int, int] = (512, 512),
    runs: int = 1,
    warmup: int = 0,
    tile: int = 192,
    overlap: int = 8,
    cache_dir: str | Path | None = None,
) -> list[UpscalerRecord]:
    """Time upscaler file `path` on `backends` and as its torch module; the baseline's record comes first."""
    from sdrt.engines import BACKENDS, backend_module
    from sdrt.export.upscalers import open_library
    from sdrt.upscalers import Tiling, Upscaler, load_upscaler, to_image, to_tensor
    from sdrt.upscalers.library import torch_engines

    path = Path(path)
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs {runs} must be at least 1 and warmup {warmup} at least 0")
    tiling = Tiling(tile, overlap)
    image = init_image(*size)
    model = load_upscaler(path)
    started = time.perf_counter()
    reference_engine = torch_engines(device)(model)
    baseline = Upscaler(BASELINE, _ModuleCall(model.module().to(device), reference_engine), tiling)
    records = {BASELINE: UpscalerRecord(BASELINE, prepare_seconds=time.perf_counter() - started)}
    upscalers = {BASELINE: baseline}
    for backend in backends:
        name = f"sdrt-{backend}"
        if backend not in BACKENDS:
            records[name] = UpscalerRecord(name, "skipped", f"this sdrt has no {backend} backend")
            continue
        try:
            backend_module(backend).options(device=device)  # says what is missing here (a GPU, a library)
        except (ValueError, ImportError) as exc:
            records[name] = UpscalerRecord(name, "skipped", str(exc))
            continue
        started = time.perf_counter()
        try:
            upscalers[name] = open_library(path.parent, backend, device, tiling, cache_dir=cache_dir).get(path.stem)
        except (ValueError, ImportError, RuntimeError) as exc:
            records[name] = UpscalerRecord(name, "failed", str(exc))
            continue
        records[name] = UpscalerRecord(name, prepare_seconds=time.perf_counter() - started)
    tensor = to_tensor(image, device)
    outputs: dict[str, Image.Image] = {}
    for i in range(warmup + runs):  # contenders alternate run by run: a slow spell of the machine hits them all
        for name, upscaler in upscalers.items():
            if records[name].status != "ok":
                continue
            try:
                begin = time.perf_counter()
                result = upscaler(tensor)
                if result.device.type == "cuda":
                    torch.cuda.synchronize(result.device)
                elapsed = time.perf_counter() - begin
            except (RuntimeError, ValueError) as exc:
                records[name].status, records[name].reason = "failed", str(exc)
                continue
            if i >= warmup:
                records[name].seconds.append(elapsed)
            if name not in outputs:
                outputs[name] = to_image(result[0])
    reference = outputs.get(BASELINE)
    for name, out in outputs.items():
        records[name].output_size = out.size
        if reference is not None:
            diff = np.abs(np.asarray(out, np.int16) - np.asarray(reference, np.int16))
            records[name].max_diff = int(diff.max())
    return list(records.values())


def format_upscaler_table(path: Path, records: Sequence[UpscalerRecord], size: tuple[int, int]) -> str:
    """A plain-text table: median seconds, speed against the torch module, the largest difference from its image."""
    base = next((r.median for r in records if r.contender == BASELINE), None)
    rows = [["contender", "median s", "runs", "vs torch module", "prepare s", "output", "max diff /255", "note"]]
    for r in records:
        ratio = f"{base / r.median:.2f}x" if base and r.median else "-"
        rows.append([
            r.contender,
            f"{r.median:.3f}" if r.median is not None else "-",
            str(len(r.seconds)),
            ratio,
            f"{r.prepare_seconds:.1f}",
            "x".join(map(str, r.output_size)) if r.output_size else "-",
            str(r.max_diff) if r.max_diff is not None else "-",
            r.reason or "",
        ])  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"{path.name}: {size[0]}x{size[1]} in (speed: the torch module's median / the contender's)"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)
