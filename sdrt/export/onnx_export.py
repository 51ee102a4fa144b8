"""Export one component's torch module to an ONNX file whose IO is exactly its ComponentSpec."""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import onnx
import torch
from torch import nn

from sdrt.onnx_files import EXTERNAL_DATA_THRESHOLD, ONNX_DATA_FILE, ONNX_FILE, OnnxFile, describe_onnx
from sdrt.spec import ComponentSpec, ShapeRanges

log = logging.getLogger(__name__)


def trace_values(spec: ComponentSpec, ranges: ShapeRanges) -> dict[str, int]:
    """Symbol values to trace at: inside the ranges, height != width, odd latent sizes, two text chunks.

    An odd latent size makes diffusers' UNet take its size-matched upsampling path, so the traced
    graph works at every latent size, not only at multiples of the UNet's overall downsampling.
    A text sequence longer than one chunk keeps 77 from being baked into the attention reshapes.
    """
    dims = ranges.dims()
    values = {}
    for symbol, r in dims.items():
        if "batch" in symbol:
            values[symbol] = min(2, r.max)
        elif symbol.startswith("latent_"):
            v = r.opt if r.opt % 2 else (r.opt - 1 if r.opt - 1 >= r.min else r.opt + 1)
            values[symbol] = max(r.min, min(v, r.max))
        elif symbol == "text_sequence":
            values[symbol] = min(2 * r.min, r.max)
        else:
            values[symbol] = r.opt
    if values["latent_width"] == values["latent_height"]:
        w = values["latent_height"] + 2
        values["latent_width"] = w if w <= dims["latent_width"].max else max(dims["latent_width"].min, w - 4)
    return values


def export_component(
    module: nn.Module,
    spec: ComponentSpec,
    ranges: ShapeRanges,
    out_dir: Path,
    opset: int = 17,
    values: Mapping[str, int] | None = None,
) -> OnnxFile:
    """Trace `module` to `out_dir/model.onnx` with the spec's names and dynamic axes.

    It is traced at `values` (symbol -> size), by default `trace_values`. Graphs over ~2 GB keep their weights in
    one external file beside it (`model.onnx.data`). Returns paths relative to `out_dir`'s parent (the artifact
    root).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    at = trace_values(spec, ranges) if values is None else values
    feeds = spec.sample_inputs(at, torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory(prefix=f"sdrt-export-{spec.name}-") as scratch:
        raw = Path(scratch) / ONNX_FILE
        log.info("tracing %s to ONNX (opset %d)", spec.name, opset)
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter warns about every Python branch on a shape; the trace shapes
            # above were chosen so the branches taken are the general ones.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                tuple(feeds[name] for name in spec.input_names),
                str(raw),
                dynamo=False,  # the TorchScript exporter: 40x faster than dynamo on the UNet, exact
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_axes=spec.dynamic_axes(),
                opset_version=opset,
                do_constant_folding=True,
            )
        size = sum(p.stat().st_size for p in Path(scratch).iterdir())
        if size > EXTERNAL_DATA_THRESHOLD or len(list(Path(scratch).iterdir())) > 1:
            consolidate_external_data(raw, out_dir)
        else:
            shutil.move(str(raw), out_dir / ONNX_FILE)
    return describe_onnx(out_dir, out_dir.parent)


def consolidate_external_data(raw: Path, out_dir: Path) -> None:
    """Rewrite an exported graph whose weights lie in many files (torch's export past 2 GB) as `out_dir/model.onnx`
    with them all in one `model.onnx.data`, copying the bytes file by file.

    Loading the weights into the graph to save them again would hold a second copy of them beside the torch
    module being exported: 10 GB more for SDXL's fp32 UNet, which is what made its export peak at 21 GB.
    """
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    model = onnx.load(str(raw), load_external_data=False)
    data = out_dir / ONNX_DATA_FILE
    with data.open("wb") as out:
        for tensor in _tensors(model.graph):
            if not uses_external_data(tensor):
                continue
            info = ExternalDataInfo(tensor)
            source = raw.parent / info.location
            length = info.length if info.length else source.stat().st_size - (info.offset or 0)
            offset = out.tell()
            with source.open("rb") as src:
                src.seek(info.offset or 0)
                remaining = length
                while remaining:
                    chunk = src.read(min(remaining, 1 << 24))
                    if not chunk:
                        raise ValueError(f"{source} ends {remaining} bytes early: the export is incomplete")
                    out.write(chunk)
                    remaining -= len(chunk)
            # onnx's set_external_data wants the bytes in memory; only the record changes here
            del tensor.external_data[:]
            for key, value in (("location", ONNX_DATA_FILE), ("offset", str(offset)), ("length", str(length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
    onnx.save_model(model, str(out_dir / ONNX_FILE))


def _tensors(graph: onnx.GraphProto):
    """The graph's initializers and the tensors of its Constant nodes (torch's export nests no subgraphs here)."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                yield attribute.t
