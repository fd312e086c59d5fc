"""What `python -m superres evaluate` writes besides evaluation.json: evaluation.md (the tables, the targets
checked), evaluation_per_image.csv and the sample grids (samples/*.png, credited in samples/README.md)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .results import PERCEPTUAL, PERCEPTUAL_TITLES, SCORES, credit, find, label, set_title, task_rows, tasks

SAMPLE_IMAGES = ("frll_126_03", "frll_140_08", "interfaces_092")
SAMPLE_SCALE = 4
SAMPLE_CROP = 224          # side of the crops in HR pixels, centred on the face
# Issue 9's close-ups: where a grid or a halo shows first. Centres in the 512-px target, picked by eye.
SAMPLE_DETAILS = {
    "frll_126_03": {"eye": (215, 228), "mouth": (250, 310), "hair edge": (300, 104)},
    "frll_140_08": {"eye": (220, 226), "mouth": (250, 302), "hair edge": (258, 118)},
    "interfaces_092": {"eye": (236, 206), "mouth": (191, 290), "hair edge": (206, 46)},
}
DETAIL_CROP, DETAIL_ZOOM = 96, 2   # HR pixels per close-up, shown enlarged (nearest) so a 4-px grid is visible


# ---- evaluation.md ---------------------------------------------------------------------------------
def quality_table(report: dict, set_name: str, scale: int) -> list[dict]:
    """The rows of one (set, scale), in method order, each with `label` and `delta_psnr` vs bicubic."""
    rows = task_rows(report, set_name, scale)
    bic = find(rows, set_name, scale, "bicubic")
    return [{**r, "label": label(r["method"], r["strength"]),
             "delta_psnr": None if bic is None else round(r["psnr_y"] - bic["psnr_y"], 2)} for r in rows]


def _fmt(v, digits):
    return "–" if v is None else f"{v:.{digits}f}"


def targets_table(report: dict) -> list[str]:
    lines = ["| target | measured | required | met |", "| --- | ---: | ---: | :---: |"]
    for t in report["targets"]:
        met = {True: "yes", False: "**no**", None: "not measured"}[t["passed"]]
        lines.append(f"| {t['description'].replace('|', chr(92) + '|')} | {_fmt(t['measured'], 3)} | "
                     f"{_fmt(t['required'], 3)} | {met} |")
    return lines


def quality_title(report: dict, set_name: str, scale: int) -> str:
    return f"{set_title(set_name)} ×{scale} ({quality_table(report, set_name, scale)[0]['n_images']} images)"


def quality_markdown(report: dict, set_name: str, scale: int) -> list[str]:
    lines = [f"| method | PSNR(Y) dB | Δ dB | SSIM(Y) | {PERCEPTUAL_TITLES[PERCEPTUAL]} | HF ratio | lattice | spectral |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in quality_table(report, set_name, scale):
        lines.append(f"| {r['label']} | {r['psnr_y']:.2f} | {_fmt(r['delta_psnr'], 2)} | {r['ssim_y']:.4f} | "
                     f"{r[PERCEPTUAL]:.4f} | {r['hf_ratio']:.3f} | {_fmt(r.get('lattice'), 2)} | "
                     f"{_fmt(r.get('spectral'), 3)} |")
    return lines


def speed_title(report: dict) -> str:
    return f"Speed ({report['speed'][0]['input']} input, median of runs after a warm-up; each method in its own process)"


def speed_markdown(report: dict) -> list[str]:
    lines = ["| method | scale | output | s / image | MP/s (output) | peak RSS MB | load s | runs |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["speed"]:
        opt = f", tile={r['options']['tile']}" if r["options"].get("tile") is not None else ""
        lines.append(f"| {label(r['method'], r['strength'])}{opt} | ×{r.get('scale', 4)} | {r['output']} | "
                     f"{r['seconds_per_image']:.3f} | {r['megapixels_per_s']:.2f} | {r['peak_rss_mb']:.0f} | "
                     f"{r['load_seconds']:.2f} | {r['runs']} |")
    return lines


def markdown_report(report: dict) -> str:
    m = report["machine"]
    card = report.get("model_card")
    lines = ["# Evaluation", "",
             f"Made by `{report['command']}` on {report['created']} ({m['cpu']}, {m['cores']} cores, "
             f"load average {m['loadavg_start']} at the start).", ""]
    if card:
        name, sha = next(iter(card["sha256"].items()), ("", ""))
        lines += [f"Model: `{card['name']}` created {card.get('created')} ({card['dir']}; "
                  f"{name} sha256 {sha[:12]}…), default strength {card.get('default_strength')}.", ""]
        if card.get("untrained"):
            lines += ["**These are random-weight (untrained) models: a pipeline check, not results.**", ""]
        if report.get("jpeg_network_use"):
            used = "; ".join(f"{task} {n} of {total}" for task, (n, total) in report["jpeg_network_use"].items())
            lines += [f"Inputs that showed JPEG compression and so went through the JPEG-trained faithful network "
                      f"at strengths below 1 (`superres.compression`): {used}.", ""]
    lines += ["PSNR and SSIM on Y (BT.601) with `scale` pixels shaved; HaarPSI (piq, RGB, weight-free; higher is "
              "better); HF ratio = RMS of the Laplacian of Y, output over target (< 1 smoother than the target, > 1 "
              "added texture); lattice = the strongest 2/4/8-px grid peak of the output's spectrum relative to the "
              "target's (1 = none added); spectral = distance of the output's detail spectrum from the target's (0 = "
              "the same). Means over the images (medians for lattice and spectral); Δ = PSNR minus bicubic's.", ""]
    if report.get("targets"):
        lines += ["## Targets", "", *targets_table(report), ""]
    for set_name, scale in tasks(report):
        lines += [f"## {quality_title(report, set_name, scale)}", "", *quality_markdown(report, set_name, scale), ""]
    if report.get("speed"):
        lines += [f"## {speed_title(report)}", "", *speed_markdown(report),
                  "", "Timings depend on what else runs on the machine (see the load average above).", ""]
    lines += ["Data: portraits from ../shared/data/portraits/valid (Face Research Lab London Set, CC BY 4.0; "
              "inter-faces, CC0); Set5, Set14, BSD100 as collected by SelfExSR (Huang et al., CVPR 2015); peers: "
              "OpenCV dnn_superres models (Apache-2.0).", ""]
    return "\n".join(lines)


# ---- the README's results block ----------------------------------------------------------------------
README_BEGIN = "<!-- results: made by `python -m superres report` from Code/results/evaluation.json; do not edit by hand -->"
README_END = "<!-- /results -->"


def readme_results(report: dict) -> str:
    """The README's tables (portraits x4, speed, targets), from the same rows and wording as evaluation.md."""
    lines = [f"**{quality_title(report, 'portraits512', 4)}**", "", *quality_markdown(report, "portraits512", 4), ""]
    if report.get("speed"):
        lines += [f"**{speed_title(report)}**", "", *speed_markdown(report), ""]
    if report.get("targets"):
        lines += ["**Targets** (from the issues; measured, not tuned to):", "", *targets_table(report)]
    return "\n".join(lines)


def with_readme_results(readme: str, report: dict) -> str:
    """`readme` with the text between README_BEGIN and README_END replaced by `readme_results(report)`."""
    start, end = readme.index(README_BEGIN) + len(README_BEGIN), readme.index(README_END)
    return readme[:start] + "\n" + readme_results(report) + "\n" + readme[end:]


def write_per_image_csv(per_image: list[dict], path: Path) -> None:
    """One row per image and method, for error bars and paired tests."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["set", "scale", "method", "strength", "image", *SCORES])
        w.writeheader()
        for r in per_image:
            w.writerow({**r, **{k: round(r[k], 5) for k in SCORES}})


# ---- samples ---------------------------------------------------------------------------------------
def label_font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:   # Pillow < 10.1
        return ImageFont.load_default()

def sample_grid(parts: dict[str, np.ndarray], scale: int = SAMPLE_SCALE, crop: int = SAMPLE_CROP) -> Image.Image:
    """One row of face crops: input (nearest), the methods present, target; labelled underneath."""
    hr = parts["target"]
    h, w = hr.shape[:2]
    c = min(crop, h, w) // scale * scale
    cx, cy = w // 2, int(h * 0.45)
    x0 = min(max(0, (cx - c // 2) // scale * scale), w - c)
    y0 = min(max(0, (cy - c // 2) // scale * scale), h - c)
    panels = [("Input (x4 LR)", np.asarray(Image.fromarray(
        parts["input"][y0 // scale:(y0 + c) // scale, x0 // scale:(x0 + c) // scale]).resize((c, c), Image.NEAREST)))]
    for key in (label("bicubic", None), label("lapsrn", None), label("ours", 0.0), label("ours", 1.0)):
        if key in parts:
            panels.append((key, parts[key][y0:y0 + c, x0:x0 + c]))
    panels.append(("Target", hr[y0:y0 + c, x0:x0 + c]))
    pad, text_h = 4, 22
    grid = Image.new("RGB", (len(panels) * (c + pad) - pad, c + text_h), "white")
    draw = ImageDraw.Draw(grid)
    font = label_font(15)
    for i, (name, arr) in enumerate(panels):
        grid.paste(Image.fromarray(np.ascontiguousarray(arr)), (i * (c + pad), 0))
        draw.text((i * (c + pad) + 4, c + 3), name, fill="black", font=font)
    return grid

def detail_grid(parts: dict[str, np.ndarray], centres: dict[str, tuple[int, int]]) -> Image.Image:
    """Close-ups (eye, mouth, hair edge: one row each) of bicubic, LapSRN, ours at strength 0 / 0.5 / 1 and the
    target, enlarged `DETAIL_ZOOM` times with nearest-neighbour so that a grid is seen, not smoothed away."""
    keys = [k for k in (label("bicubic", None), label("lapsrn", None), label("ours", 0.0), label("ours", 0.5),
                        label("ours", 1.0), "target") if k in parts]
    c, side, pad, text_h = DETAIL_CROP, DETAIL_CROP * DETAIL_ZOOM, 4, 20
    grid = Image.new("RGB", (len(keys) * (side + pad) - pad, len(centres) * (side + pad) + text_h), "white")
    draw = ImageDraw.Draw(grid)
    font = label_font(14)
    for j, key in enumerate(keys):
        draw.text((j * (side + pad) + 4, 2), "Target" if key == "target" else key, fill="black", font=font)
    for i, (region, (cx, cy)) in enumerate(centres.items()):
        h, w = parts["target"].shape[:2]
        x0, y0 = min(max(0, cx - c // 2), w - c), min(max(0, cy - c // 2), h - c)
        for j, key in enumerate(keys):
            crop = Image.fromarray(np.ascontiguousarray(parts[key][y0:y0 + c, x0:x0 + c]))
            grid.paste(crop.resize((side, side), Image.NEAREST), (j * (side + pad), text_h + i * (side + pad)))
        box = draw.textbbox((4, text_h + i * (side + pad) + 2), region, font=font)
        draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill="white")
        draw.text((4, text_h + i * (side + pad) + 2), region, fill="black", font=font)
    return grid

def write_samples(kept: dict, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written, lines = [], []
    for name, parts in sorted(kept.items()):
        path = out_dir / f"{name}_x4.png"
        sample_grid(parts).save(path, optimize=True)
        written.append(path)
        lines.append(f"- `{path.name}`: portraits/valid/{name} — {credit(name)}")
        if name in SAMPLE_DETAILS:
            path = out_dir / f"{name}_x4_details.png"
            detail_grid(parts, SAMPLE_DETAILS[name]).save(path, optimize=True)
            written.append(path)
            lines.append(f"- `{path.name}`: its eye, mouth and hair edge, {DETAIL_ZOOM}x enlarged")
    if written:
        (out_dir / "README.md").write_text(
            "# Sample crops (x4, portraits512)\n\nEach `*_x4.png` row: the x4 input (nearest-neighbour), bicubic, "
            "LapSRN, ours at strength 0 and 1, the target. Each `*_x4_details.png`: close-ups of an eye, the mouth "
            f"and a hair edge ({DETAIL_CROP} px of the 512-px target, shown {DETAIL_ZOOM}x with nearest-neighbour so "
            "a grid would show): bicubic, LapSRN, ours at strength 0, 0.5 and 1, the target. Written by "
            "`python -m superres evaluate`; these are outputs of the methods, made from validation portraits (never "
            "used in training):\n\n" + "\n".join(lines) + "\n")
    return written

