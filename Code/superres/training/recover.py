"""Trainable generators from shipped ONNX files (`python -m superres recover`), so that a model folder, which holds
no PyTorch checkpoints, can be fine-tuned (`train --init <recovered.pt>`).

An exported network (see `superres.training.export`) keeps PyTorch's module paths in its ONNX node names, and its
int8 form (`superres.training.quantize`) stores each convolution's effective weights: batch norms folded in, weight
norm and spectral norm evaluated, weights at 7 bits per channel. This module reads each Conv's weight and bias back
(dequantised) and writes them into a fresh `Generator` of the card's architecture:

* weight-normed convs: v = W, g = |W| per output channel (so g * v / |v| = W);
* spectral-normed convs: the stored weight is W_orig / (u . W_orig v) with the power iteration's u, v; W_orig = W,
  u = W's top left singular vector and v = its right one / sigma(W) give W back in eval mode (training's power
  iteration, which normalises v, then divides by sigma(W), about 1 for a trained network);
* a conv whose batch norm was folded (conv without a bias in PyTorch, with one in ONNX): the conv gets W and its
  batch norm becomes "subtract the mean of W*x, divide by its std, multiply by the std, add the mean and the folded
  bias": the identity in eval mode, with running statistics measured on `calibration` inputs, so that a
  training-mode forward (batch statistics) starts close to the shipped network too.

The recovered float network is the int8 one without its activation rounding; `recover` checks its outputs against
the ONNX file's and refuses one that differs by more than the int8 budget.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from superres.training.export import onnx_difference
from superres.training.models import Generator, UnetConfig, save_network

MAX_MEAN_ABS_ERROR = 0.01   # recovered torch vs the ONNX file, on [0, 1] outputs (int8 activations cost ~0.002)


def _module_path(node_name: str) -> str:
    """'/unet/layers.0/layers.0.4/layers.0.4.0/convpath/convpath.0/convpath.0.0/Conv' -> 'unet.layers.0.4.0.convpath
    .0.0': each scope segment repeats its parent's name plus a suffix, or is a new attribute."""
    segments = node_name.strip("/").split("/")[:-1]
    path, prev = segments[0], segments[0]
    for s in segments[1:]:
        path += s[len(prev):] if s.startswith(prev + ".") else "." + s
        prev = s
    return path


def onnx_weights(path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray | None]], dict[str, np.ndarray]]:
    """({module path: (weight, bias or None)} of every Conv in an ONNX generator, dequantised to float32; the other
    initializers by name)."""
    import onnx
    from onnx import numpy_helper
    graph = onnx.load(str(path)).graph
    if not any(n.op_type == "DequantizeLinear" for n in graph.node):   # a float file: fold as quantize_onnx does
        graph = _folded(path).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    made_by = {out: n for n in graph.node for out in n.output}

    def value(name):
        if name in inits:
            return inits[name].astype(np.float32)
        node = made_by.get(name)
        if node is not None and node.op_type == "DequantizeLinear":
            q, scale, zero = (inits[i] for i in node.input)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [1] * q.ndim
            if scale.ndim:
                shape[axis] = -1
            return (q.astype(np.float32) - zero.astype(np.float32).reshape(shape)) * scale.reshape(shape)
        raise ValueError(f"{path}: cannot read the constant {name!r} (made by {node and node.op_type})")

    convs = {}
    for node in graph.node:
        if node.op_type == "Conv" and not node.name.startswith("/skip/"):   # the skip is a fixed kernel
            bias = value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            convs[_module_path(node.name)] = (value(node.input[1]), bias)
    return convs, inits


def _folded(path):
    """The ONNX model at `path` with its constants folded by ONNX Runtime (weight norms evaluated, batch norms fused
    into their convs, the float16 weights' Casts applied): the form int8 files are made from."""
    import tempfile

    import onnx
    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(Path(tmp) / "folded.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return onnx.load(so.optimized_model_filepath)


def _conv_of(model: nn.Module, path: str) -> tuple[nn.Module, nn.Module]:
    """(the conv at `path`, its parent)."""
    parent_path, _, last = path.rpartition(".")
    parent = model.get_submodule(parent_path)
    conv = parent.get_submodule(last)
    if not isinstance(conv, nn.Conv1d | nn.Conv2d):
        raise ValueError(f"{path} is a {type(conv).__name__}, not a convolution")
    return conv, parent


@torch.no_grad()
def network_from_onnx(path, cfg: UnetConfig, calibration: list[torch.Tensor] = ()) -> Generator:
    """A float `Generator` with the weights of the ONNX generator at `path` (float or int8) in eval mode."""
    model = Generator(cfg).eval()
    convs, inits = onnx_weights(path)
    folded = []     # (conv, its batch norm, folded bias): statistics set below
    for name, (w, b) in convs.items():
        conv, parent = _conv_of(model, name)
        shape = conv.weight_orig.shape if hasattr(conv, "weight_orig") else conv.weight.shape
        w = torch.from_numpy(w).reshape(shape)
        if hasattr(conv, "weight_g"):           # weight norm (dim 0)
            conv.weight_v.copy_(w)
            conv.weight_g.copy_(w.flatten(1).norm(dim=1).view_as(conv.weight_g))
        elif hasattr(conv, "weight_orig"):      # spectral norm
            u, s, vh = torch.linalg.svd(w.flatten(1), full_matrices=False)
            conv.weight_orig.copy_(w)
            conv.weight_u.copy_(u[:, 0])
            conv.weight_v.copy_(vh[0] / s[0])   # eval mode divides by u.W.v = 1: W itself
        else:
            conv.weight.copy_(w)
        if conv.bias is not None:
            conv.bias.copy_(torch.from_numpy(b) if b is not None else torch.zeros_like(conv.bias))
        elif b is not None:                     # a batch norm was folded into this conv
            bn = next(m for m in parent.children() if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d))
            folded.append((conv, bn, torch.from_numpy(b)))
    state = model.state_dict()
    for name, t in inits.items():               # batch norms that were not folded, attention gamma, mean/std
        if name in state and state[name].shape == t.shape:
            state[name].copy_(torch.from_numpy(t.astype(np.float32)))
    missing = set(convs) - {n for n, _ in model.named_modules()}
    if missing:
        raise ValueError(f"{path}: convolutions with no counterpart in a {cfg} generator: {sorted(missing)[:3]}")
    _set_folded_norms(model, folded, calibration)
    return model.eval()


def _set_folded_norms(model: Generator, folded, calibration) -> None:
    """Each folded batch norm computes bias + (y - m) / sqrt(v + eps) * sqrt(v + eps) + m = y + bias in eval mode,
    for any m, v: m, v are measured on the calibration inputs (y = the conv's output) so that training, which
    normalises by batch statistics, starts from nearly the same function."""
    stats = {id(conv): [0.0, 0.0, 0] for conv, _, _ in folded}

    def hook(conv, _inputs, y):
        dims = [0] + list(range(2, y.ndim))
        s = stats[id(conv)]
        s[0] = s[0] + y.sum(dims).double()
        s[1] = s[1] + (y.double() ** 2).sum(dims)
        s[2] += y.numel() // y.shape[1]

    for _, bn, _ in folded:   # the identity with m = 0, v = 1 - eps while measuring
        bn.running_mean.zero_()
        bn.running_var.fill_(1 - bn.eps)
        bn.weight.fill_(1.0)
        bn.bias.zero_()
    handles = [conv.register_forward_hook(hook) for conv, _, _ in folded]
    try:
        for x in calibration:
            model(x)
    finally:
        for h in handles:
            h.remove()
    for conv, bn, bias in folded:
        total, squares, n = stats[id(conv)]
        mean = (total / n).float() if n else torch.zeros_like(bias)
        var = (squares / n - (total / n) ** 2).clamp_min(1e-6).float() if n else torch.ones_like(bias) - bn.eps
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.weight.copy_((var + bn.eps).sqrt())
        bn.bias.copy_(mean + bias)


def recover(model_dir, out_dir, data: str | None = None, n_calibration: int = 32) -> dict:
    """Write `<scale>_<kind>.pt` (a `load_network` checkpoint) for every network of a model folder into `out_dir`;
    `data`: photo folders (comma-separated) whose degraded crops calibrate the batch-norm statistics (without them a
    training-mode forward differs from the shipped network). Returns {file: mean |torch - onnx|}."""
    from superres.runtime.model_folder import read_card
    from superres.training.data import Degradation
    from superres.training.quantize import calibration_inputs
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    card = read_card(model_dir)
    if not data:
        print("recover: no --data, so the folded batch norms keep mean 0 / variance 1: the checkpoints reproduce the "
              "ONNX files in eval mode, but training from them starts far from the shipped networks")
    out_dir.mkdir(parents=True, exist_ok=True)
    errors = {}
    for scale, kinds in card["networks"].items():
        cfg = UnetConfig(**card["architecture"][f"x{scale}"])
        inputs = [torch.from_numpy(x) for x in
                  calibration_inputs(data.split(","), Degradation(scale=int(scale)), n=n_calibration)] if data else []
        checks = inputs[:4] or [torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))]
        for kind, name in kinds.items():
            model = network_from_onnx(model_dir / name, cfg, inputs)
            err = onnx_difference(model, model_dir / name, checks)
            if err > MAX_MEAN_ABS_ERROR:
                raise RuntimeError(f"{name}: the recovered network differs from the ONNX file by {err:.4f} (mean)")
            out = out_dir / f"x{scale}_{kind}.pt"
            save_network(model, out)
            errors[out.name] = round(err, 5)
            print(f"{name} -> {out} (mean |torch - onnx| {err:.5f})")
    (out_dir / "recovered.json").write_text(json.dumps({"model_dir": str(model_dir), "calibration": data,
                                                        "mean_abs_error_vs_onnx": errors}, indent=2))
    return errors


# ---- CLI -------------------------------------------------------------------------------------------
def add_arguments(p):
    p.add_argument("model_dir", nargs="?", default=None,
                   help="model folder to read (default: the shipped one, superres/default_model)")
    p.add_argument("-o", "--out", required=True, help="folder for the .pt checkpoints (train --init takes one)")
    p.add_argument("--data", default=None,
                   help="training photo folders (comma-separated) to measure batch-norm statistics on: needed to "
                        "fine-tune (a training-mode forward uses them)")


def run(args):
    from superres import DEFAULT_MODEL_DIR
    recover(args.model_dir or DEFAULT_MODEL_DIR, args.out, data=args.data)
