"""Export trained generators: ONNX files for serving (what `enhance` and the web app read) and a JSON
model card, together a model folder (`superres.runtime.model_folder` says what one holds).

Each ONNX file maps "input" (1,3,H,W) float32 RGB in [0,1], H and W multiples of `input_multiple`,
to "output" (1,3,S*H,S*W) float32 (not clamped). Weights are stored as float16 (half the size; the network
computes in float32). Initializers keep the PyTorch parameter names (plus `.fp16`; no constant folding at
export, ONNX Runtime folds at load). A `strength` between 0 and 1 blends the outputs of a scale's two
generators (see `superres.runtime.inference`).
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from superres import __version__
from superres.runtime.model_folder import CARD, DEFAULT_STRENGTH, FORMAT, network_files, sha256
from superres.training.models import SIZE_MULTIPLE, Generator, UnetConfig, load_network, n_params

OPSET = 17


FP16_MIN_SIZE = 256   # smaller tensors (biases, norms) stay float32


def store_weights_fp16(path: Path, min_size: int = FP16_MIN_SIZE) -> None:
    """Store the float32 weights of an ONNX file as float16, each followed by a Cast back to float32.

    Halves the file; ONNX Runtime folds the Casts at load, so the network still computes in float32 at the
    same speed (measured: max |difference| 3e-4 on [0, 1] outputs). The initializers are renamed
    `<name>.fp16`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    model = onnx.load(str(path))
    graph = model.graph
    casts = []
    for t in list(graph.initializer):
        if t.data_type == TensorProto.FLOAT and np.prod(t.dims) >= min_size:
            half = numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name + ".fp16")
            casts.append(helper.make_node("Cast", [half.name], [t.name], to=TensorProto.FLOAT, name=t.name + ".cast"))
            graph.initializer.remove(t)
            graph.initializer.append(half)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    onnx.save(model, str(path))


def export_onnx(model: Generator, path: Path, check: bool = True) -> float:
    """Write `model` as ONNX with dynamic height/width and float16-stored weights; returns the max
    |onnx - torch| on a test input (the cost of the float16 storage).

    Two checks: the file must compute what torch computes with the same float16-rounded weights (a wrong
    export shows here, whatever the weights), and the float16 storage must cost under two grey levels (an
    overflow or a weight that float16 cannot hold shows there)."""
    model = model.float().eval().to(memory_format=torch.contiguous_format)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 2 * SIZE_MULTIPLE, 3 * SIZE_MULTIPLE, generator=gen)
    torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {2: "height", 3: "width"}, "output": {2: "height2", 3: "width2"}},
                      opset_version=OPSET, do_constant_folding=False, dynamo=False)
    store_weights_fp16(path, min_size=FP16_MIN_SIZE)
    if not check:
        return 0.0
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # check at a different size than the trace, so dynamic shapes really work
    x = torch.rand(1, 3, 3 * SIZE_MULTIPLE, 2 * SIZE_MULTIPLE, generator=gen)
    out = sess.run(["output"], {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
        ref16 = fp16_rounded(model)(x).numpy()
    export_err = float(np.abs(out - ref16).max())
    if export_err > 1e-3:   # float32 summation order (up to 2.5e-4 seen; a wrong export is off by far more)
        raise RuntimeError(f"ONNX output differs from torch (same float16 weights) by {export_err:.2e} "
                           f"for {path.name}: the export is wrong")
    err = float(np.abs(out - ref).max())
    if err > 8e-3:
        raise RuntimeError(f"float16 weights change the output of {path.name} by {err:.2e} (over two grey levels)")
    return err


def fp16_rounded(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` whose float tensors of `FP16_MIN_SIZE` or more values are rounded to float16, as
    `store_weights_fp16` stores them."""
    import copy
    model = copy.deepcopy(model)
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point() and t.numel() >= FP16_MIN_SIZE:
                t.copy_(t.half().float())
    return model


def export_models(networks: dict, out_dir, card: dict | None = None, int8: dict | None = None) -> dict:
    """Write {scale: {kind: generator}} (kinds: "faithful", "gan" and optionally "faithful_jpeg", "faithful_real",
    "gan_real", see
    `superres.runtime.model_folder`) as ONNX files and the model card into `out_dir`; returns the card.

    int8: {scale: {kind: calibration inputs}} to store those networks as int8 (`superres.training.quantize`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    errors, files, arch, params, int8_errors = {}, {}, {}, {}, {}
    for scale, nets in sorted(networks.items(), key=lambda kv: -int(kv[0])):
        scale, faithful = int(scale), nets["faithful"]
        if any(m.cfg != faithful.cfg for m in nets.values()) or faithful.cfg.scale != scale:
            raise ValueError(f"x{scale}: all of the scale's generators must share one x{scale} architecture")
        files[str(scale)] = network_files(scale, jpeg="faithful_jpeg" in nets, real="gan_real" in nets,
                                          real_faithful="faithful_real" in nets)
        for kind, name in files[str(scale)].items():
            path = out_dir / name
            errors[f"x{scale}_{kind}"] = export_onnx(nets[kind], path)
            calibration = (int8 or {}).get(scale, {}).get(kind)
            if calibration is not None:
                int8_errors[f"x{scale}_{kind}"] = quantize_and_compare(nets[kind], path, calibration)
        arch[f"x{scale}"], params[f"x{scale}"] = faithful.cfg.to_dict(), n_params(faithful)
    names = [f for entry in files.values() for f in entry.values()]
    full = {
        "name": "superres-portrait",
        "package_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "format": FORMAT,
        "scales": sorted(int(s) for s in files),
        "networks": files,
        "input_multiple": SIZE_MULTIPLE,
        "io": {"input": "input", "output": "output", "layout": "NCHW float32 RGB in [0,1]"},
        "default_strength": DEFAULT_STRENGTH,
        "sha256": {f: sha256(out_dir / f) for f in names},
        "architecture": arch,
        "parameters": params,
        "onnx_max_abs_error_vs_torch": errors,
        **({"int8": {"method": "ONNX Runtime static quantisation (QDQ, per-channel 7-bit weights, min/max "
                               "calibration on degraded training crops); the skip (fixed enlargement) and head "
                               "convs stay float32",
                     "calibration_inputs": {f"x{s}_{k}": len(v) for s, kinds in int8.items() for k, v in kinds.items()},
                     "mean_abs_error_vs_torch": int8_errors}} if int8 else {}),
        **(card or {}),
    }
    (out_dir / CARD).write_text(json.dumps(full, indent=2))
    return full


def quantize_and_compare(model: Generator, path: Path, inputs) -> float:
    """Store the ONNX file at `path` as int8; returns its mean |int8 - torch| over the first calibration inputs."""
    from superres.training.quantize import quantize_onnx
    quantize_onnx(path, inputs)
    return onnx_difference(model, path, inputs[:4])


def onnx_difference(model: Generator, path: Path, inputs) -> float:
    """Mean |onnx - torch| of the ONNX file at `path` against `model` on `inputs` ((1,3,h,w) arrays or tensors)."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = model.float().eval()
    errs = []
    for x in inputs:
        x = np.asarray(x, np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        errs.append(float(np.abs(sess.run(["output"], {"input": x})[0] - ref).mean()))
    return float(np.mean(errs))


def export_untrained(out_dir, cfg: UnetConfig | None = None, seed: int = 0, scales=(4, 2), jpeg_scales=(),
                     real_scales=(), real_faithful_scales=()) -> dict:
    """A complete model folder from randomly initialised networks (for tests and for trying the pipeline).

    The output head starts near zero, so these behave like bicubic upscaling plus a small perturbation
    (the GAN copy, the JPEG one of the `jpeg_scales`, the real-world GAN of the `real_scales` and the real-world
    faithful one of the `real_faithful_scales` are perturbed differently, so each visibly matters)."""
    torch.manual_seed(seed)
    cfg = cfg or UnetConfig(widen=0.25, nf=16, trunk_blocks=1)
    networks = {}
    for scale in scales:
        kinds = ("faithful", "gan") + (("faithful_jpeg",) if scale in jpeg_scales else ()) \
            + (("gan_real",) if scale in real_scales else ()) \
            + (("faithful_real",) if scale in real_faithful_scales else ())
        nets = {kind: Generator(replace(cfg, scale=scale)) for kind in kinds}
        with torch.no_grad():
            for m in nets.values():
                m.load_state_dict(nets["faithful"].state_dict())
                m.head[0][0].weight.normal_(0, 1e-3)
        networks[scale] = {kind: m.eval() for kind, m in nets.items()}
    return export_models(networks, out_dir, {"untrained": True, "note": "random weights, for tests only"})


TRAINING_SETS = {
    "portraits/train": "portraits: Face Research Lab London Set (DeBruine & Jones 2017, CC BY 4.0), Young Adult "
                       "White Faces and young adult composite faces (DeBruine, CC BY 4.0), webmorphR.stim (CC0), "
                       "inter-faces (Pexels/Unsplash, CC0)",
    "general/train": "general photos: T91 (Yang et al., IEEE TIP 2010; no open licence, conventional academic SR "
                     "training use) and BSDS200 (Martin et al., ICCV 2001; research/academic use)",
}


def training_sets(data: str) -> list[str]:
    """Credit and licence of each training folder in `data` (comma-separated), as far as they are known."""
    out = []
    for folder in (f for f in data.split(",") if f):
        name = "/".join(Path(folder).parts[-2:])
        out.append(f"{name}: {TRAINING_SETS.get(name, 'unknown source: say where it comes from')}")
    return out


def export_runs(run_dirs, out_dir, int8_data: str | None = None, jpeg_run_dirs=(), real_gan_run_dirs=(),
                real_faithful_run_dirs=()) -> dict:
    """ONNX model folder + model card from finished runs, one per scale (e.g. an x4 run and an x2 run).

    int8_data: photo folders (comma-separated; the training data) to calibrate int8 networks on, with the
    degradations each run trained with; None keeps the networks float.
    jpeg_run_dirs: runs whose generator (stage 1 only) was trained on JPEG-compressed inputs: each becomes its
    scale's `faithful_jpeg` network; the card records it under `jpeg_networks`.
    real_gan_run_dirs: runs trained on the real-world chain (`train --degradation real`): the strength-1 network of
    each (polished GAN) becomes its scale's `gan_real`; the card records it under `real_networks`.
    real_faithful_run_dirs: runs fine-tuned on the real-world chain from a faithful network: each becomes its scale's
    `faithful_real` (card: `real_faithful_networks`)."""
    networks, card, int8 = {}, {"data": {}, "losses": {}, "stages": {}, "training": {}}, {}

    def calibration(record, scale):
        from superres.training.data import degradation_from_record
        from superres.training.quantize import calibration_inputs
        return calibration_inputs(int8_data.split(","), degradation_from_record(record["degradation"][f"x{scale}"]))

    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        record = json.loads((run_dir / "record.json").read_text())
        cfg, ck = record["config"], run_dir / "checkpoints"
        faithful = load_network(ck / "generator_faithful.pt")
        # the strength-1 end: the polished GAN generator (stage 4) where the run has one, else stage 3's
        gan_path = next((p for p in (ck / "generator_polished.pt", ck / "generator_gan.pt") if p.exists()), None)
        gan = load_network(gan_path) if gan_path else faithful
        scale = str(faithful.cfg.scale)
        if scale in networks:
            raise ValueError(f"two runs for x{scale}: {run_dirs}")
        networks[scale] = {"faithful": faithful.eval(), "gan": gan.eval()}
        card["data"][f"x{scale}"] = {"train": cfg["data"], "valid": cfg["valid"], "hr_crop": cfg["hr_size"],
                                     "training_sets": training_sets(cfg["data"]),
                                     "degradation": record.get("degradation")}
        card["losses"][f"x{scale}"] = {"generator": record.get("loss"), "critic": "BCEWithLogits (AdaptiveLoss)",
                                       "gan": f"adversarial + {record.get('loss')} weighted {cfg['gan_weights']}"
                                              + (f", + {cfg['lattice_weight']:g} x lattice loss in the content term"
                                                 if cfg.get("lattice_weight") else ""),
                                       **({"polish": record["stages"]["polish"]["loss"]}
                                          if "polish" in record["stages"] else {})}
        card["stages"][f"x{scale}"] = record["stages"]
        card["training"][f"x{scale}"] = {"device": cfg["device"], "bf16": cfg["bf16"],
                                         "pretrained_encoder": cfg["pretrained"], "run": run_dir.name}
        if int8_data:
            inputs = calibration(record, scale)
            int8[int(scale)] = {"faithful": inputs, "gan": inputs}
    for run_dir in map(Path, jpeg_run_dirs):
        record = json.loads((run_dir / "record.json").read_text())
        model = load_network(run_dir / "checkpoints" / "generator_faithful.pt").eval()
        scale = str(model.cfg.scale)
        if scale not in networks:
            raise ValueError(f"the JPEG run {run_dir} is x{scale}, but no --run gives that scale's networks")
        if "faithful_jpeg" in networks[scale]:
            raise ValueError(f"two JPEG runs for x{scale}: {list(jpeg_run_dirs)}")
        networks[scale]["faithful_jpeg"] = model
        card.setdefault("jpeg_networks", {})[f"x{scale}"] = {
            "used": "in place of the faithful network when the input shows JPEG quantisation of IJG quality ~75 or "
                    "lower and is sharp (superres.runtime.compression.input_kind 'jpeg')",
            "run": run_dir.name, "train": record["config"]["data"],
            "training_sets": training_sets(record["config"]["data"]), "degradation": record.get("degradation"),
            "loss": record.get("loss"), "stages": record["stages"],
            **({"note": record["note"]} if record.get("note") else {})}
        if int8_data:
            int8[int(scale)]["faithful_jpeg"] = calibration(record, scale)
    for kind, run_dirs in (("gan_real", real_gan_run_dirs), ("faithful_real", real_faithful_run_dirs)):
        for run_dir in map(Path, run_dirs):
            scale, model, entry, inputs = real_network(run_dir, kind, int8_data)
            if scale not in networks:
                raise ValueError(f"the real-world run {run_dir} is x{scale}, but no --run gives that scale's networks")
            if kind in networks[scale]:
                raise ValueError(f"two {kind} runs for x{scale}: {list(run_dirs)}")
            networks[scale][kind] = model
            card.setdefault(REAL_CARD_KEY[kind], {})[f"x{scale}"] = entry
            if inputs:
                int8[int(scale)][kind] = inputs
    return export_models(networks, out_dir, card, int8)


REAL_USE = {
    "gan_real": "in place of the GAN network when the input reads as real-world: soft, or noisy and sent on as a "
                "light JPEG (superres.runtime.compression.input_kind 'real')",
    "faithful_real": "in place of the faithful network when the input reads as real-world: soft, or noisy and sent "
                     "on as a light JPEG (superres.runtime.compression.input_kind 'real')",
}


REAL_CARD_KEY = {"gan_real": "real_networks", "faithful_real": "real_faithful_networks"}


def real_network(run_dir: Path, kind: str, int8_data: str | None):
    """(scale, the run's network of `kind`, its card entry, its int8 calibration inputs or None) of a run trained on
    the real-world chain. kind "faithful_real": the run's stage-1 generator; "gan_real": its strength-1 network (the
    polished GAN, else the GAN generator, else, for a stage-1 fine-tune (`--init`, e.g. of a GAN network), its one
    generator)."""
    record = json.loads((run_dir / "record.json").read_text())
    if record["config"].get("degradation") != "real":
        raise ValueError(f"{run_dir} was not trained with --degradation real")
    ck = run_dir / "checkpoints"
    names = {"faithful_real": ("generator_faithful.pt",),
             "gan_real": ("generator_polished.pt", "generator_gan.pt")}[kind]
    path = next((ck / n for n in names if (ck / n).exists()), None)
    init = record["stages"].get("generator", {}).get("init")
    if path is None and kind == "gan_real" and init:   # a stage-1 fine-tune (of a GAN network): its only generator
        path = ck / "generator_faithful.pt"
    if path is None or not path.exists():
        raise FileNotFoundError(f"{run_dir} has no {kind} network (looked for {', '.join(names)})")
    model = load_network(path).eval()
    scale = str(model.cfg.scale)
    entry = {"used": REAL_USE[kind], "run": run_dir.name, "checkpoint": path.name, "init": init,
             "train": record["config"]["data"],
             "training_sets": training_sets(record["config"]["data"]), "degradation": record.get("degradation"),
             "loss": record.get("loss"), "stages": record["stages"],
             "training": {k: record["config"].get(k) for k in ("device", "bf16", "hr_size", "bs", "clean_prob",
                                                             "lr_gen", "adversarial_weight", "lattice_weight")}}
    inputs = None
    if int8_data:
        from superres.training.data import degradation_from_record
        from superres.training.quantize import calibration_inputs
        inputs = calibration_inputs(int8_data.split(","), degradation_from_record(record["degradation"][f"x{scale}"]))
    return scale, model, entry, inputs


def add_real_networks(model_dir, runs: dict, int8_data: str | None = None) -> dict:
    """Add real-world networks to an existing model folder, {kind: run folders} with kind "faithful_real" or
    "gan_real" (its other networks and their card entries stay as they are); returns the updated card."""
    from superres.runtime.model_folder import read_card
    model_dir = Path(model_dir)
    card = read_card(model_dir)
    for kind, run_dirs in runs.items():
        for run_dir in map(Path, run_dirs):
            scale, model, entry, inputs = real_network(run_dir, kind, int8_data)
            if scale not in card["networks"]:
                raise ValueError(f"{model_dir} has no x{scale} networks for the {kind} network of {run_dir}")
            arch = card["architecture"][f"x{scale}"]
            if model.cfg.to_dict() != arch:
                raise ValueError(f"{run_dir}'s x{scale} network differs in architecture from {model_dir}'s")
            name, key = f"x{scale}_{kind}.onnx", f"x{scale}_{kind}"
            card["onnx_max_abs_error_vs_torch"][key] = export_onnx(model, model_dir / name)
            if inputs:
                card.setdefault("int8", {}).setdefault("calibration_inputs", {})[key] = len(inputs)
                card["int8"].setdefault("mean_abs_error_vs_torch", {})[key] = quantize_and_compare(
                    model, model_dir / name, inputs)
            card["networks"][scale][kind] = name
            card["sha256"][name] = sha256(model_dir / name)
            card.setdefault(REAL_CARD_KEY[kind], {})[f"x{scale}"] = entry
    card["real_networks_added"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    (model_dir / CARD).write_text(json.dumps(card, indent=2))
    return card


# ---- CLI -------------------------------------------------------------------------------------------
def add_arguments(p):
    p.add_argument("--run", action="append", default=None,
                   help="training run folder (with checkpoints/); repeat it for the other scale's run")
    p.add_argument("--jpeg-run", action="append", default=[], metavar="RUN",
                   help="run folder of a generator trained on JPEG-compressed inputs (train --init <faithful.pt> "
                        "--stages generator --clean-prob 0 --jpeg-prob 1 --jpeg-quality 20,80): it stands in for its "
                        "scale's faithful network on inputs that look JPEG-compressed (quality ~75 or lower)")
    p.add_argument("--real-gan-run", action="append", default=[], metavar="RUN",
                   help="run folder trained on the real-world chain (train --degradation real): its strength-1 network "
                        "stands in for its scale's GAN network on real-world inputs (soft, or noisy and lightly "
                        "compressed)")
    p.add_argument("--real-faithful-run", action="append", default=[], metavar="RUN",
                   help="run folder fine-tuned on the real-world chain (train --init <faithful.pt> "
                        "--degradation real): its generator stands in for its scale's faithful network on real-world "
                        "inputs (soft, or noisy and lightly compressed)")
    p.add_argument("--into", metavar="MODEL_DIR", default=None,
                   help="add the --real-gan-run / --real-faithful-run networks to this existing model folder instead "
                        "of writing a new one")
    p.add_argument("-o", "--out", default=None, help="model folder to write (default: <run>/export)")
    p.add_argument("--untrained", action="store_true", help="export randomly initialised networks (for tests)")
    p.add_argument("--int8", metavar="FOLDERS", default=None,
                   help="store the networks as int8 (about 1.7x faster on a CPU with VNNI, -0.01 dB), calibrated on "
                        "degraded crops of the photos in these comma-separated folders (the training data)")


def run(args):
    if args.into:
        if args.run or args.jpeg_run or args.untrained or not (args.real_gan_run or args.real_faithful_run):
            raise SystemExit("--into takes only --real-gan-run and --real-faithful-run (and --int8)")
        runs = {"gan_real": args.real_gan_run, "faithful_real": args.real_faithful_run}
        add_real_networks(args.into, {k: v for k, v in runs.items() if v}, int8_data=args.int8)
        print(f"added to {args.into}: " + ", ".join(f"{k} of {r}" for k, v in runs.items() for r in v))
        return
    runs = args.run or ["runs/default"]
    out = Path(args.out or Path(runs[0]) / "export")
    if args.untrained:
        card = export_untrained(out)
    else:
        card = export_runs(runs, out, int8_data=args.int8, jpeg_run_dirs=args.jpeg_run,
                           real_gan_run_dirs=args.real_gan_run, real_faithful_run_dirs=args.real_faithful_run)
    print(f"wrote {out}: " + ", ".join(card["sha256"]) + f", {CARD}")
