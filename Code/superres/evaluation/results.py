"""What an evaluation records and how it is named: the one home of evaluation.json's schema, the test sets,
methods and scores, their order, labels and titles, the data credits and the targets. `evaluate` writes
these results and `report` reads them; plain Python (no numpy, no torch).

evaluation.json (format 1): {format, created, command, data_root, limit, seconds,
machine{cpu, cores, threads, platform, python, loadavg_start, loadavg_end, versions},
model_card{dir, name, created, package_version, untrained, default_strength, networks, sha256{file: hex}} | null,
quality[{set, scale, method, strength|null, n_images, psnr_y, ssim_y, haarpsi, hf_ratio, lattice, spectral,
identity|null, identity_faces, identity_missed, bicubic_same_images{psnr_y, identity}|absent}],
speed[{method, strength|null, options, input, output, scale, runs, seconds_per_image, min_seconds,
megapixels_per_s, load_seconds, peak_rss_mb}], targets[{id, description, measured, required, passed|null}],
input_kinds{"<set> x<scale>": {clean, jpeg, real: inputs the Enhancer read as that kind}} (where a model is
evaluated; only the scales that have networks for compressed inputs), degradation{"<set>": {"<scale>": the chain's
ranges (superres.training.degradations.RealWorld.to_dict), seed}} (the real-world sets evaluated), identity{how it is
measured} (where a face set is evaluated), realesrgan{model, backend, x2, limit, images, cpu_seconds_per_image}
(where it ran)}.
identity is the mean over the images whose target shows a face (identity_faces of them; identity_missed had
none); null on sets without faces. A method run on fewer images than the set (Real-ESRGAN, --realesrgan-limit)
carries bicubic's scores on the same images in bicubic_same_images, and its delta is taken against those.
"""
from __future__ import annotations

import json
from pathlib import Path

FORMAT = 1

# ---- test sets -------------------------------------------------------------------------------------
JPEG_QUALITY = 40
PORTRAIT_SETS = {"portraits512": None, "portraits512_jpeg40": JPEG_QUALITY}   # set -> JPEG quality of its LR
BENCHMARK_SETS = ("Set5", "Set14", "BSD100")
# real-world sets: the HR of a set above, its LR made by superres.training.degradations.RealWorld, seeded by the file
# name
REAL_SETS = {"portraits512_real": "portraits512", "BSD100_real": "BSD100"}   # set -> the set whose HR it degrades
FACE_SETS = ("portraits512", "portraits512_jpeg40", "portraits512_real")     # the sets scored for identity
SETS = (*PORTRAIT_SETS, "portraits512_real", *BENCHMARK_SETS, "BSD100_real")
SCALES = (4, 2)
# set -> (heading in evaluation.md, caption in the report); other sets are titled by their name
SET_TITLES = {"portraits512": ("portraits/valid at 512 px", "portraits/valid at 512 px"),
              "portraits512_jpeg40": ("portraits/valid at 512 px, LR as JPEG q40",
                                      "portraits/valid at 512 px, input saved as JPEG q40"),
              "portraits512_real": ("portraits/valid at 512 px, real-world degradation",
                                    "portraits/valid at 512 px, input degraded by the real-world chain"),
              "BSD100_real": ("BSD100, real-world degradation", "BSD100, input degraded by the real-world chain")}

# ---- methods, in the order of every table ----------------------------------------------------------
METHODS = ("bicubic", "lanczos", "fsrcnn", "espcn", "lapsrn", "realesrgan", "ours")
DEFAULT_METHODS = tuple(m for m in METHODS if m != "realesrgan")   # Real-ESRGAN only when asked (slow on a CPU)
DISPLAY = {"bicubic": "Bicubic", "lanczos": "Lanczos", "fsrcnn": "FSRCNN", "espcn": "ESPCN",
           "lapsrn": "LapSRN", "realesrgan": "Real-ESRGAN", "ours": "Ours"}
REALESRGAN_LIMIT = 8       # by default Real-ESRGAN runs on 8 images of each real-world set and scale
STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)

# ---- scores ----------------------------------------------------------------------------------------
PERCEPTUAL = "haarpsi"      # the perceptual score evaluate measures; older results had one of the others
PERCEPTUAL_TITLES = {"haarpsi": "HaarPSI", "lpips": "LPIPS", "dists": "DISTS", "ms_ssim": "MS-SSIM"}
LOWER_IS_BETTER = {"lpips", "dists"}
SCORES = ("psnr_y", "ssim_y", PERCEPTUAL, "hf_ratio", "lattice", "spectral")
MEDIAN_SCORES = ("lattice", "spectral")   # a few images with huge values would rule a mean: the median
IDENTITY = "identity"        # the face descriptor distance (superres.evaluation.identity), on FACE_SETS only
DIGITS = {"psnr_y": 4, "ssim_y": 4, PERCEPTUAL: 4, "hf_ratio": 4, "lattice": 3, "spectral": 4,
          IDENTITY: 4}   # rounded at display
ROW_KEYS = {"set", "scale", "method", "strength", "n_images", "psnr_y", "ssim_y", "hf_ratio", "lattice", "spectral",
            IDENTITY, "identity_faces", "identity_missed", "bicubic_same_images"}

# ---- credits of the portraits (../shared/data/README.md), by file-name prefix -----------------------
# prefix -> (full credit, for samples/README.md; short credit in LaTeX, for the report)
CREDITS = {
    "frll": ("Face Research Lab London Set, DeBruine, L. & Jones, B. (2017), doi:10.6084/m9.figshare.5047666.v5, "
             "CC BY 4.0", "Face Research Lab London Set, DeBruine \\& Jones (2017), CC BY 4.0"),
    "canada": ("Young Adult White Faces with Manipulated Versions, DeBruine, L., figshare 4220517, CC BY 4.0",
               "Young Adult White Faces with Manipulated Versions, DeBruine, CC BY 4.0"),
    "composite": ("Young adult composite faces, DeBruine, L. (2016), doi:10.6084/m9.figshare.4055130.v1, CC BY 4.0",
                  "Young adult composite faces, DeBruine (2016), CC BY 4.0"),
    "lisa": ("webmorphR.stim example photos, CC0", "webmorphR.stim example photos, CC0"),
    "zoom": ("webmorphR.stim example photos, CC0", "webmorphR.stim example photos, CC0"),
    "interfaces": ('"inter-faces" avatar set (Pexels / Unsplash community photos), CC0',
                   "``inter-faces'' avatar set (Pexels/Unsplash community photos), CC0"),
}
UNKNOWN_CREDIT = "see ../shared/data/README.md"


def credit(image_name: str, latex: bool = False) -> str:
    """The credit line of a portrait (`frll_126_03` -> the Face Research Lab London Set)."""
    full_and_short = CREDITS.get(image_name.split("_")[0])
    return UNKNOWN_CREDIT if full_and_short is None else full_and_short[latex]


def set_title(set_name: str, caption: bool = False) -> str:
    return SET_TITLES[set_name][caption] if set_name in SET_TITLES else set_name


def label(method: str, strength: float | None) -> str:
    """`Ours (s=0.5)`, `LapSRN`: how a method is named in evaluation.md, the logs and the sample grids."""
    return DISPLAY.get(method, method) + ("" if strength is None else f" (s={strength:g})")


# ---- reading evaluation.json -----------------------------------------------------------------------
def load_json(path) -> dict | None:
    """A JSON file (evaluation.json, a model card, a training record) as a dict; None when there is none yet."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def tasks(report: dict) -> list[tuple[str, int]]:
    """The (set, scale) pairs of the quality rows, in the order they were measured."""
    seen = []
    for r in report.get("quality", []):
        if (r["set"], r["scale"]) not in seen:
            seen.append((r["set"], r["scale"]))
    return seen


def task_rows(report: dict, set_name: str, scale: int) -> list[dict]:
    """The quality rows of one (set, scale) in table order: by method, then strength."""
    rows = [r for r in report["quality"] if (r["set"], r["scale"]) == (set_name, scale)]
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(rows, key=lambda r: (order.get(r["method"], 99), r["method"],
                                       -1 if r.get("strength") is None else r["strength"]))


def find(rows, set_name, scale, method, strength=None):
    """The row of one method on one (set, scale); `strength` None matches any strength."""
    for r in rows:
        if (r["set"], r["scale"], r["method"]) == (set_name, scale, method) and (
                strength is None or (r["strength"] is not None and abs(r["strength"] - strength) < 1e-9)):
            return r
    return None


def perceptual_key(rows) -> str | None:
    """The perceptual score the rows carry (haarpsi today; older evaluations had lpips or dists)."""
    for r in rows:
        for k in r:
            if k not in ROW_KEYS and isinstance(r[k], (int, float)) and not isinstance(r[k], bool):
                return k
    return None


# ---- the targets the model is held to (the JPEG one is checked at the model card's default strength) --------
BICUBIC_GAIN_CLEAN = 2.0
BICUBIC_GAIN_JPEG = 1.5
SET5_X4_PSNR = 30.72
SET14_X4_PSNR = 27.6
LATTICE_MAX = 4.0
SPECTRAL_MAX_S1 = 0.5
REAL_GAIN_DEFAULT = 1.5        # portraits512_real x4 at the default strength, dB over bicubic
REAL_GAIN_S1 = 0.5             # ... at strength 1
REAL_IDENTITY_DEFAULT = 0.85   # identity distance at most this times bicubic's, at the default strength
REAL_IDENTITY_S1 = 0.95        # ... at strength 1
GENERAL_REAL_GAIN = 0.7        # BSD100_real x4 at the default strength, dB over bicubic
SPEED_MAX_SECONDS = 0.35
SPEED_MIN_VS_LAPSRN = 8.0


def check_targets(quality, speed, default_strength=0.5) -> list[dict]:
    def target(id_, desc, measured, required, passed):
        ok = None if measured is None or required is None else bool(passed)
        return {"id": id_, "description": desc, "measured": measured, "required": required, "passed": ok}

    def psnr(*key):
        r = find(quality, *key)
        return None if r is None else r["psnr_y"]

    out = []
    bic, s0 = psnr("portraits512", 4, "bicubic"), psnr("portraits512", 4, "ours", 0.0)
    req = None if bic is None else round(bic + BICUBIC_GAIN_CLEAN, 3)
    out.append(target("portraits_x4_s0", f"portraits512 x4, strength 0: PSNR(Y) >= bicubic + {BICUBIC_GAIN_CLEAN} dB",
                      s0, req, s0 is not None and req is not None and s0 >= req))
    bic_j, sd = psnr("portraits512_jpeg40", 4, "bicubic"), psnr("portraits512_jpeg40", 4, "ours", default_strength)
    req = None if bic_j is None else round(bic_j + BICUBIC_GAIN_JPEG, 3)
    out.append(target("jpeg40_x4_default",
                      f"portraits512_jpeg40 x4, default strength {default_strength:g}: PSNR(Y) >= bicubic + "
                      f"{BICUBIC_GAIN_JPEG} dB", sd, req, sd is not None and req is not None and sd >= req))
    s5 = psnr("Set5", 4, "ours", 0.0)
    out.append(target("set5_x4_s0", f"Set5 x4, strength 0: PSNR(Y) >= {SET5_X4_PSNR} dB", s5, SET5_X4_PSNR,
                      s5 is not None and s5 >= SET5_X4_PSNR))
    s14 = psnr("Set14", 4, "ours", 0.0)
    out.append(target("set14_x4_s0", f"Set14 x4, strength 0: PSNR(Y) >= {SET14_X4_PSNR} dB", s14, SET14_X4_PSNR,
                      s14 is not None and s14 >= SET14_X4_PSNR))
    r0, r1 = find(quality, "portraits512", 4, "ours", 0.0), find(quality, "portraits512", 4, "ours", 1.0)
    d0 = None if r0 is None else round(abs(r0["hf_ratio"] - 1), 4)
    d1 = None if r1 is None else round(abs(r1["hf_ratio"] - 1), 4)
    out.append(target("hf_s1_closer", "portraits512 x4: |HF ratio - 1| at strength 1 < at strength 0",
                      d1, d0, d0 is not None and d1 is not None and d1 < d0))
    p1 = None if r1 is None else r1["psnr_y"]
    out.append(target("psnr_s1_above_bicubic", "portraits512 x4, strength 1: PSNR(Y) > bicubic", p1, bic,
                      p1 is not None and bic is not None and p1 > bic))
    # a GAN that looks real: no grid at any strength, the photo's own detail spectrum at strength 1
    ours4 = [r for r in quality if (r["set"], r["scale"], r["method"]) == ("portraits512", 4, "ours")
             and r.get("lattice") is not None]
    worst = max(ours4, key=lambda r: r["lattice"], default=None)
    out.append(target("lattice_all_strengths", f"portraits512 x4: lattice <= {LATTICE_MAX:g} at every strength"
                      + ("" if worst is None else f" (worst: s={worst['strength']:g})"),
                      None if worst is None else worst["lattice"], LATTICE_MAX,
                      worst is not None and worst["lattice"] <= LATTICE_MAX))
    sp1 = None if r1 is None else r1.get("spectral")
    out.append(target("spectral_s1", f"portraits512 x4, strength 1: spectral <= {SPECTRAL_MAX_S1:g}", sp1,
                      SPECTRAL_MAX_S1, sp1 is not None and sp1 <= SPECTRAL_MAX_S1))
    rb = find(quality, "portraits512", 4, "bicubic")
    h1, hb = (None if r is None else r.get(PERCEPTUAL) for r in (r1, rb))
    out.append(target("haarpsi_s1", f"portraits512 x4, strength 1: {PERCEPTUAL_TITLES[PERCEPTUAL]} >= bicubic's",
                      h1, hb, h1 is not None and hb is not None and h1 >= hb))
    # the photos people bring: the real-world sets
    bic_r = find(quality, "portraits512_real", 4, "bicubic")
    rd, r1r = (find(quality, "portraits512_real", 4, "ours", st) for st in (default_strength, 1.0))
    for id_, row, gain, what in (("real_x4_default", rd, REAL_GAIN_DEFAULT, f"default strength {default_strength:g}"),
                                 ("real_x4_s1", r1r, REAL_GAIN_S1, "strength 1")):
        m = None if row is None else row["psnr_y"]
        req = None if bic_r is None else round(bic_r["psnr_y"] + gain, 3)
        out.append(target(id_, f"portraits512_real x4, {what}: PSNR(Y) >= bicubic + {gain:g} dB", m, req,
                          m is not None and req is not None and m >= req))
    lat_r, sp_r = (None if r1r is None else r1r.get(k) for k in ("lattice", "spectral"))
    out.append(target("real_x4_s1_lattice", f"portraits512_real x4, strength 1: lattice <= {LATTICE_MAX:g}", lat_r,
                      LATTICE_MAX, lat_r is not None and lat_r <= LATTICE_MAX))
    out.append(target("real_x4_s1_spectral", f"portraits512_real x4, strength 1: spectral <= {SPECTRAL_MAX_S1:g}",
                      sp_r, SPECTRAL_MAX_S1, sp_r is not None and sp_r <= SPECTRAL_MAX_S1))
    for id_, row, factor, what in (("real_x4_identity_default", rd, REAL_IDENTITY_DEFAULT,
                                    f"default strength {default_strength:g}"),
                                   ("real_x4_identity_s1", r1r, REAL_IDENTITY_S1, "strength 1")):
        m = None if row is None else row.get(IDENTITY)
        ref = None if bic_r is None else bic_r.get(IDENTITY)
        req = None if ref is None else round(ref * factor, 4)
        out.append(target(id_, f"portraits512_real x4, {what}: identity distance <= {factor:g} x bicubic's", m, req,
                          m is not None and req is not None and m <= req))
    bic_g, gd = find(quality, "BSD100_real", 4, "bicubic"), find(quality, "BSD100_real", 4, "ours", default_strength)
    m = None if gd is None else gd["psnr_y"]
    req = None if bic_g is None else round(bic_g["psnr_y"] + GENERAL_REAL_GAIN, 3)
    out.append(target("general_real_x4_default", f"BSD100_real x4, default strength {default_strength:g}: PSNR(Y) >= "
                      f"bicubic + {GENERAL_REAL_GAIN:g} dB", m, req, m is not None and req is not None and m >= req))
    ours = next((r for r in speed if r["method"] == "ours" and r["options"].get("tile") == "auto"
                 and r.get("scale", 4) == 4), None)
    lap = next((r for r in speed if r["method"] == "lapsrn" and r.get("scale", 4) == 4), None)
    t = None if ours is None else ours["seconds_per_image"]
    out.append(target("speed_x4_256", f"x4 256->1024: <= {SPEED_MAX_SECONDS} s per image", t, SPEED_MAX_SECONDS,
                      t is not None and t <= SPEED_MAX_SECONDS))
    ratio = None if t is None or lap is None else round(lap["seconds_per_image"] / t, 2)
    out.append(target("speed_vs_lapsrn", f"x4 256->1024: >= {SPEED_MIN_VS_LAPSRN:g}x faster than LapSRN (same run)",
                      ratio, SPEED_MIN_VS_LAPSRN, ratio is not None and ratio >= SPEED_MIN_VS_LAPSRN))
    return out

