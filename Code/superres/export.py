"""Export trained networks: ONNX files for serving (what `enhance` and the web app read), a fastai
`export.pkl` for fastai users, and a JSON model card.

The model folder holds:
    generator_faithful.onnx   x2, pre-GAN weights (strength 0)
    generator_gan.onnx        x2, GAN weights (strength 1); same graph and initializer names as the faithful one
    upsampler.onnx            x2 applied after the generator for x4
    model_card.json           what they are, how they were trained, how well they do, their sha256

Each ONNX file maps "input" (1,3,H,W) float32 RGB in [0,1], H and W multiples of `input_multiple`,
to "output" (1,3,2H,2W) float32 (not clamped). Initializers keep the PyTorch parameter names
(no constant folding at export; ONNX Runtime folds at load), so the two generators can be blended
by name for a `strength` between 0 and 1 (ESRGAN's network interpolation).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .models import SIZE_MULTIPLE, Generator, UnetConfig, n_params

FILES = {"generator_faithful": "generator_faithful.onnx",
         "generator_gan": "generator_gan.onnx",
         "upsampler": "upsampler.onnx"}
CARD = "model_card.json"
OPSET = 17


def export_onnx(model: Generator, path: Path, check: bool = True) -> float:
    """Write `model` as ONNX with dynamic height/width; returns the max |onnx - torch| on a test input."""
    model = model.float().eval().to(memory_format=torch.contiguous_format)
    x = torch.rand(1, 3, 2 * SIZE_MULTIPLE, 3 * SIZE_MULTIPLE)
    torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {2: "height", 3: "width"}, "output": {2: "height2", 3: "width2"}},
                      opset_version=OPSET, do_constant_folding=False, dynamo=False)
    if not check:
        return 0.0
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # check at a different size than the trace, so dynamic shapes really work
    x = torch.rand(1, 3, 3 * SIZE_MULTIPLE, 2 * SIZE_MULTIPLE)
    with torch.no_grad():
        ref = model(x).numpy()
    out = sess.run(["output"], {"input": x.numpy()})[0]
    err = float(np.abs(out - ref).max())
    if err > 1e-3:
        raise RuntimeError(f"ONNX output differs from torch by {err:.2e} for {path.name}")
    return err


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def export_models(faithful: Generator, gan: Generator, upsampler: Generator, out_dir, card: dict | None = None) -> dict:
    """Write the three ONNX files and the model card into `out_dir`; returns the card."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    errors = {}
    for key, model in [("generator_faithful", faithful), ("generator_gan", gan), ("upsampler", upsampler)]:
        errors[key] = export_onnx(model, out_dir / FILES[key])
    full = {
        "name": "superres-portrait",
        "package_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "format": 1,
        "scales": [2, 4],
        "chain": {"2": ["generator"], "4": ["generator", "upsampler"]},
        "input_multiple": SIZE_MULTIPLE,
        "io": {"input": "input", "output": "output", "layout": "NCHW float32 RGB in [0,1]", "network_scale": 2},
        "default_strength": 0.25,
        "files": dict(FILES),
        "sha256": {f: sha256(out_dir / f) for f in FILES.values()},
        "architecture": {"generator": faithful.cfg.to_dict(), "upsampler": upsampler.cfg.to_dict()},
        "parameters": {"generator": n_params(faithful), "upsampler": n_params(upsampler)},
        "onnx_max_abs_error_vs_torch": errors,
        **(card or {}),
    }
    (out_dir / CARD).write_text(json.dumps(full, indent=2))
    return full


def export_untrained(out_dir, cfg: UnetConfig | None = None, seed: int = 0) -> dict:
    """A complete model folder from randomly initialised networks (for tests and for trying the pipeline).

    The output head starts at zero, so these behave like bicubic upscaling plus a small perturbation
    (the GAN copy is perturbed differently, so strength visibly matters)."""
    torch.manual_seed(seed)
    cfg = cfg or UnetConfig(widen=0.25, head_nf=16)
    faithful, ups = Generator(cfg), Generator(cfg)
    gan = Generator(cfg)
    gan.load_state_dict(faithful.state_dict())
    with torch.no_grad():
        for m in (faithful, gan, ups):
            last = m.head[-1][0]
            last.weight.normal_(0, 1e-3)
    return export_models(faithful, gan, ups, out_dir, {"untrained": True,
                                                        "note": "random weights, for tests only"})


# ---- CLI -------------------------------------------------------------------------------------------
def add_arguments(p):
    p.add_argument("--run", default="runs/default", help="training run folder (with checkpoints/)")
    p.add_argument("-o", "--out", default=None, help="model folder to write (default: <run>/export)")
    p.add_argument("--untrained", action="store_true", help="export randomly initialised networks (for tests)")


def run(args):
    out = Path(args.out or Path(args.run) / "export")
    if args.untrained:
        card = export_untrained(out)
    else:
        from .train import export_run
        card = export_run(args.run, out)
    print(f"wrote {out}: " + ", ".join(card["files"].values()) + f", {CARD}")
