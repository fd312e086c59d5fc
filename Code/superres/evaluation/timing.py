"""Speed for `python -m superres evaluate`: each method runs in its own child process (so its peak memory is
its own, and the children carry no torch): load, one warm-up, then the median of several runs of x4 on a
256x256 input (output 1024x1024); ours and LapSRN at x2 as well."""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from superres.evaluation.benchmark import EvaluationError, Ours, build_methods, load_enhancer, log_progress, portrait_hr
from superres.evaluation.evaluation_output import SAMPLE_IMAGES
from superres.evaluation.results import label

SPEED_INPUT = 256
SPEED_SCALE = 4


def speed_input(data_root) -> Image.Image:
    """A real 256x256 face (first sample portrait at 256 px), or scikit-image's astronaut without data."""
    folder = Path(data_root) / "portraits" / "valid"
    names = [folder / f"{SAMPLE_IMAGES[0]}.jpg"] + (sorted(folder.glob("*.jpg")) if folder.is_dir() else [])
    for p in names:
        if p.is_file():
            return portrait_hr(str(p)).resize((SPEED_INPUT, SPEED_INPUT), Image.LANCZOS)
    from skimage import data
    return Image.fromarray(data.astronaut()).resize((SPEED_INPUT, SPEED_INPUT), Image.LANCZOS)


def _speed_specs(method_names, data_root, model_dir):
    """Every method at x4; ours (automatic tiles) and LapSRN at x2 as well."""
    specs = []
    for name in method_names:
        spec = {"method": name, "data_root": str(data_root), "strength": None, "options": {}, "scale": SPEED_SCALE}
        if name == "ours":
            specs.append({**spec, "model_dir": str(model_dir) if model_dir else None, "options": {"tile": "auto"}})
            specs.append({**spec, "model_dir": str(model_dir) if model_dir else None, "options": {"tile": 0}})
        else:
            specs.append(spec)
    specs += [{**s, "scale": 2} for s in specs if s["method"] in ("ours", "lapsrn") and s["options"].get("tile") != 0]
    return specs


def _child_env() -> dict:
    """The environment for the speed children: this copy of the package first on the path."""
    paths = [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def measure_speed(method_names, data_root, model_dir, runs=5, budget_s=12.0, log=None) -> list[dict]:
    """Time each method in its own child process (`python -m superres.evaluation.timing --speed-worker`)."""
    log = log or log_progress
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        inp = Path(tmp) / "input.png"
        speed_input(data_root).save(inp)
        for spec in _speed_specs(method_names, data_root, model_dir):
            spec.update(input=str(inp), runs=runs, budget_s=budget_s)
            proc = subprocess.run([sys.executable, "-m", "superres.evaluation.timing", "--speed-worker"],
                                  input=json.dumps(spec), capture_output=True, text=True, timeout=900,
                                  env=_child_env())
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode or not lines:
                raise EvaluationError(f"timing {spec['method']} failed:\n{proc.stderr[-2000:]}")
            row = json.loads(lines[-1])
            rows.append(row)
            log(f"  {label(row['method'], row['strength'])} x{row['scale']} {row['options'] or ''}: "
                f"{row['seconds_per_image']:.3f} s/image, {row['megapixels_per_s']:.2f} MP/s, "
                f"peak {row['peak_rss_mb']:.0f} MB")
    return rows


def _speed_worker() -> None:
    """Child process: build one method, warm up, time it; print one JSON line."""
    spec = json.loads(sys.stdin.read())
    scale = int(spec["scale"])
    t0 = time.perf_counter()
    if spec["method"] == "ours":
        tile = spec["options"].get("tile")
        method = Ours(load_enhancer(spec.get("model_dir")), spec.get("strength"),
                      tile=None if tile == "auto" else int(tile))
    else:
        method = build_methods([spec["method"]], (), spec["data_root"])[0]
    rgb = np.asarray(Image.open(spec["input"]).convert("RGB"))
    method(rgb, scale)                                    # warm-up (and lazy loading)
    load_s = time.perf_counter() - t0
    times = []
    while len(times) < 3 or (len(times) < spec["runs"] and sum(times) < spec["budget_s"]):
        t = time.perf_counter()
        out = method(rgb, scale)
        times.append(time.perf_counter() - t)
    sec = statistics.median(times)
    mp = out.shape[0] * out.shape[1] / 1e6
    print(json.dumps({
        "method": method.name, "strength": method.strength, "options": method.options,
        "input": f"{rgb.shape[1]}x{rgb.shape[0]}", "output": f"{out.shape[1]}x{out.shape[0]}", "scale": scale,
        "runs": len(times), "seconds_per_image": round(sec, 4), "min_seconds": round(min(times), 4),
        "megapixels_per_s": round(mp / sec, 3), "load_seconds": round(load_s - sec, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1)}))


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, where there is one: ru_maxrss survives exec on Linux,
    so in a child it would still hold the parent's peak at the fork."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024 if sys.platform == "darwin" else 1024)



if __name__ == "__main__" and sys.argv[1:] == ["--speed-worker"]:
    _speed_worker()
