"""Several ONNX graphs reading their weights from one external-data file, each distinct tensor written once.

ONNX external data names a tensor's bytes by file, offset and length, so two graphs may point into the same
file. DeepCache's full and shallow UNet graphs (and those of other branches) hold the same UNet weights: written
through one `SharedWeights`, the shallow graphs and every branch after the first add only what differs (constants
the exporter folded differently), not another copy of the UNet.

Tensors are matched by their bytes (sha256 and length), never by name: the exporter names folded constants per
graph, and two tensors of equal bytes are interchangeable wherever either is read (dtype and shape stay in each
graph's own record).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from sdrt.hashing import file_sha256
from sdrt.onnx_files import OnnxFile, tensor_bytes

MIN_SHARED_BYTES = 1024  # smaller tensors stay inside their graph, as onnx's own external-data writer keeps them
ALIGNMENT = 64  # each tensor starts at a multiple of this in the shared file (vector loads straight from a mapping)


class SharedWeights:
    """One external-data file that graphs written through it share; `add` then `save` each graph, `close` at the end.

    The file lies in the same directory as the graphs (ONNX resolves a location against the graph's directory).
    """

    def __init__(self, directory: Path, data_name: str) -> None:
        self.directory = directory
        self.data_name = data_name
        directory.mkdir(parents=True, exist_ok=True)
        self._out = (directory / data_name).open("wb")
        self._index: dict[tuple[str, int], int] = {}  # (sha256, length) -> offset in the file
        self.written = 0  # bytes of tensor data written (alignment padding not counted)
        self.referenced = 0  # bytes of tensor data the graphs read from the file, duplicates counted each time

    def save(self, model: onnx.ModelProto, source_dir: Path, name: str, artifact_root: Path) -> OnnxFile:
        """Write `model` (its external tensors read from `source_dir`) as `directory/name`, its weights in the
        shared file; check and describe it with paths relative to `artifact_root`."""
        for tensor in _weights(model.graph):
            data = _tensor_data(tensor, source_dir)
            if data is None:
                continue
            offset = self._offset(data)
            del tensor.external_data[:]
            tensor.ClearField("raw_data")
            for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
                tensor.ClearField(field)
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", self.data_name), ("offset", str(offset)), ("length", str(len(data)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            self.referenced += len(data)
        path = self.directory / name
        onnx.save_model(model, str(path))
        self._out.flush()  # the checker reads the weights the graph names
        onnx.checker.check_model(str(path))
        path.chmod(0o644)
        return OnnxFile(path=str(path.relative_to(artifact_root)), sha256=file_sha256(path))

    def close(self, artifact_root: Path) -> tuple[str, str]:
        """Finish the shared file; (its path relative to `artifact_root`, its sha256) for every graph's record."""
        self._out.close()
        data = self.directory / self.data_name
        data.chmod(0o644)
        return str(data.relative_to(artifact_root)), file_sha256(data)

    def _offset(self, data: bytes) -> int:
        key = (hashlib.sha256(data).hexdigest(), len(data))
        if key not in self._index:
            padding = -self._out.tell() % ALIGNMENT
            self._out.write(b"\0" * padding)
            self._index[key] = self._out.tell()
            self._out.write(data)
            self.written += len(data)
        return self._index[key]


def _weights(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """The initializers, and Constant-node tensors already kept outside the graph (torch's export past 2 GB)."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR and uses_external_data(attribute.t):
                yield attribute.t


def _tensor_data(tensor: onnx.TensorProto, source_dir: Path) -> bytes | None:
    """A tensor's bytes as external data holds them (raw, little-endian), or None for one that stays inline."""
    if uses_external_data(tensor):
        info = ExternalDataInfo(tensor)
        source = source_dir / info.location
        with source.open("rb") as f:
            f.seek(info.offset or 0)
            data = f.read(info.length) if info.length else f.read()
        if info.length and len(data) != info.length:
            raise ValueError(f"{source} ends before tensor {tensor.name}'s {info.length} bytes: an incomplete export")
        return data
    if tensor.data_type == onnx.TensorProto.STRING or tensor_bytes(tensor) < MIN_SHARED_BYTES:
        return None
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor).tobytes()  # typed fields (float_data, ...): the same bytes, raw
