"""int8 generators: ONNX Runtime's static quantisation of an exported ONNX file (`export --int8 FOLDERS`).

The convolutions of the U-Net and the trunk compute in int8 (QDQ, weights per channel), which CPUs with VNNI run
much faster, for at most 0.05 dB of PSNR (the budget; docs/decisions.md has the measurements). Three choices keep
the loss that small:
* the fixed enlargement (`UpscalePhases`) and the head conv stay float32: they carry the image itself and the
  final residual, where an int8 step (1/255 of their range) is a visible error;
* the calibration inputs are degraded the way training inputs are (blur, noise, JPEG), so that compressed inputs
  fall inside the calibrated ranges;
* the weights are quantised to 7 bits (`reduce_range`): on x86 CPUs without VNNI (AVX2 only, e.g. AMD before
  Zen 4, older Intel) ONNX Runtime multiplies uint8 activations by int8 weights with VPMADDUBSW, which adds pairs
  of products in int16 and saturates when both are large (with 8-bit weights: a visible grid there); 7-bit
  weights keep every sum in range.
"""
from __future__ import annotations

import random
import tempfile
from pathlib import Path

import numpy as np

from superres.training.data import Degradation, big_enough, image_files_in, make_pair

FLOAT_CONVS = ("/skip/", "/head.")   # ONNX node-name prefixes of the convs kept in float32 (see above)


def calibration_inputs(folders, degradation: Degradation, n: int = 48, hr_size: int | None = None,
                       seed: int = 0) -> list[np.ndarray]:
    """`n` degraded low-resolution crops of the photos in `folders`, as network inputs (1,3,h,w) float32 in [0,1]."""
    hr_size = hr_size or 96 * degradation.scale
    files = big_enough(image_files_in(folders), hr_size, 768)
    if not files:
        raise ValueError(f"no photos of at least {hr_size} px in {folders} to calibrate the int8 networks on")
    rng = random.Random(seed)
    inputs = []
    for _ in range(n):
        lr, _ = make_pair(files[rng.randrange(len(files))], hr_size, degradation, rng)
        inputs.append(np.asarray(lr, np.float32).transpose(2, 0, 1)[None] / 255)
    return inputs


def quantize_onnx(path: Path, inputs: list[np.ndarray]) -> None:
    """Rewrite the float ONNX generator at `path` as int8 (QDQ), calibrated on `inputs` (min/max ranges)."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Inputs(CalibrationDataReader):
        def __init__(self):
            self.items = iter(inputs)

        def get_next(self):
            x = next(self.items, None)
            return None if x is None else {"input": x}

    with tempfile.TemporaryDirectory() as tmp:
        # fold the constants first (the float16 weights' Casts, fused batch norms), so the quantiser sees plain Convs
        folded = Path(tmp) / "folded.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(folded)
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        convs = [n.name for n in onnx.load(str(folded)).graph.node if n.op_type == "Conv"]
        keep_float = [c for c in convs if c.startswith(FLOAT_CONVS)]
        quantize_static(str(folded), str(path), Inputs(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"],
                        nodes_to_exclude=keep_float, calibrate_method=CalibrationMethod.MinMax,
                        reduce_range=True)   # 7-bit weights: see the module docstring (CPUs without VNNI)
