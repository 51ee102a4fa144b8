"""ONNX Runtime's transformer optimizer on a UNet graph, keeping to fusions that have CPU kernels.

`onnxruntime.transformers.optimizer` with model_type "unet" fuses attention into `Attention` (self
attention, Q/K/V weights stacked) and `MultiHeadAttention` (cross attention), LayerNorm + residual add into
`SkipLayerNormalization`, and the erf GELU into `Gelu`: all have CPU kernels. Its other UNet fusions make
CUDA-only ops (GroupNorm, SkipGroupNorm, BiasSplitGelu, BiasAdd, NhwcConv) or packed Q/K/V layouts the CPU
kernels do not take, so they are off. The weights stay in an external data file: a copy of the source's (not a
hard link: onnx refuses to read a data file with several links), plus the stacked Q/K/V weights inline.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

from sdrt.onnx_files import ONNX_DATA_FILE, ONNX_FILE

log = logging.getLogger(__name__)

# Fusions on (the rest off): each makes an op with a CPU kernel in ONNX Runtime's contrib ops.
CPU_FUSIONS = ("attention", "layer_norm", "skip_layer_norm", "bias_skip_layer_norm", "gelu", "bias_gelu")
_OFF_FOR_CPU = (
    "enable_group_norm", "enable_skip_group_norm", "enable_bias_splitgelu", "enable_bias_add", "enable_nhwc_conv",
    "enable_packed_qkv", "enable_packed_kv",
)  # fmt: skip


def _unet_model_class():
    """ONNX Runtime's UNet optimizer with the head count read the way numpy 2 allows.

    Its attention fusion calls int() on a one-element array (an error since numpy 2.3): this subclass reads the
    same constant with .item() and otherwise fuses exactly as ONNX Runtime does.
    """
    import numpy as np
    from onnxruntime.transformers.onnx_model_unet import FusionAttentionUnet, UnetOnnxModel

    class Attention(FusionAttentionUnet):
        def get_num_heads(self, reshape_q, is_torch2: bool = False) -> int:
            if is_torch2:
                parent = self.model.get_parent(reshape_q, 1)
                if parent is None or parent.op_type != "Concat" or len(parent.input) != 4:
                    return 0
                value = self.model.get_constant_value(parent.input[2])
            else:
                shape = self.model.get_constant_value(reshape_q.input[1])
                value = shape[2] if isinstance(shape, np.ndarray) and list(shape.shape) == [4] else None
            if value is None or np.asarray(value).size != 1:
                return 0
            heads = int(np.asarray(value).reshape(-1)[0])
            return heads if heads > 0 else 0

    class CpuUnetModel(UnetOnnxModel):
        def fuse_multi_head_attention(self, options=None) -> None:
            for cross in (False, True):
                Attention(
                    self, self.hidden_size, self.num_heads, is_cross_attention=cross,
                    enable_packed_qkv=False, enable_packed_kv=False,
                ).apply()  # fmt: skip

    return CpuUnetModel


def fuse_unet(source: Path, out_dir: Path) -> dict[str, int]:
    """Write the CPU-fused graph of the UNet ONNX file `source` into `out_dir` (model.onnx + its data file).

    Returns the count of each fused op. `out_dir` should be new and empty (the caller renames it into place).
    """
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("unet")
    for name in _OFF_FOR_CPU:
        setattr(options, name, False)
    source = Path(source).resolve()
    out_dir = Path(out_dir).resolve()
    # The optimizer reads the weights it stacks (and shape inference the tensors it folds) through paths relative to
    # the working directory: work from the source's folder.
    with contextlib.chdir(source.parent), _quiet_optimizer():
        model = onnx.load(source.name, load_external_data=False)
        optimizer = _unet_model_class()(model)
        optimizer._optimize(options, None)  # what optimize() runs, without its tqdm progress bar on stderr
        optimizer.topological_sort()
    fused = {k: v for k, v in optimizer.get_fused_operator_statistics().items() if v}
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(optimizer.model, str(out_dir / ONNX_FILE))
    data = source.parent / ONNX_DATA_FILE
    if data.exists():
        shutil.copyfile(data, out_dir / ONNX_DATA_FILE)
    log.info("fused %s: %s", source, fused)
    return fused


@contextlib.contextmanager
def _quiet_optimizer():
    """The optimizer logs every fusion at INFO and shows a progress bar: keep both at warnings."""
    loggers = [logging.getLogger(n) for n in ("onnxruntime.transformers", "fusion_base", "onnx_model_unet", "")]
    levels = [x.level for x in loggers[:-1]]
    for logger in loggers[:-1]:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers[:-1], levels, strict=True):
            logger.setLevel(level)


def fused_unet(source: Path, cache_root: Path) -> Path:
    """The fused graph of `source` under `cache_root`, keyed by the source's path, size and mtime (benchmarks)."""
    from sdrt.hashing import json_sha256

    stat = Path(source).stat()
    key = json_sha256({"source": str(Path(source).resolve()), "size": stat.st_size, "mtime": stat.st_mtime_ns})[:16]
    out = cache_root / key
    if not (out / ONNX_FILE).exists():
        tmp = cache_root / f"{key}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        fuse_unet(Path(source), tmp)
        tmp.rename(out)
    return out / ONNX_FILE
