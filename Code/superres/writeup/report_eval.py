"""The write-up's evaluation parts, from evaluation.json (superres.evaluation.results reads it): eval_*.tex (tables,
lookups, findings, the real-world sets' degradation), the plan's targets, the consistency note and the sample
grids (the clean portraits' and, apart, the real-world close-ups)."""
from __future__ import annotations

from pathlib import Path

from superres.evaluation.results import (
    DISPLAY,
    FACE_SETS,
    IDENTITY,
    LOWER_IS_BETTER,
    PERCEPTUAL_TITLES,
    check_targets,
    credit,
    perceptual_key,
    set_title,
    task_rows,
    tasks,
)
from superres.writeup.latex import NOT_MEASURED, define, header, num, tex

REPO = Path(__file__).resolve().parents[3]


def method_key(method: str, strength) -> str:
    return method if strength is None else f"{method}{strength:g}"


def method_label(method: str, strength) -> str:
    name = DISPLAY.get(method, tex(method))
    return name if strength is None else f"{name} ($s{{=}}{strength:g}$)"




def bicubic_psnr(rows) -> float | None:
    return next((r["psnr_y"] for r in rows if r["method"] == "bicubic"), None)


def delta_psnr(r: dict, bic: float | None) -> float | None:
    """PSNR minus bicubic's: on the same images, for a method run on a subset of the set."""
    ref = (r.get("bicubic_same_images") or {}).get("psnr_y", bic)
    return None if ref is None else r["psnr_y"] - ref


def has_identity(rows) -> bool:
    return any(r.get(IDENTITY) is not None for r in rows)


def quality_tabular(report: dict, set_name: str, scale: int) -> str:
    """One booktabs tabular: method, PSNR(Y), delta vs bicubic, SSIM(Y), perceptual, HF ratio, lattice, spectral;
    best PSNR, SSIM and perceptual in bold."""
    rows = task_rows(report, set_name, scale)
    pk = perceptual_key(rows)
    ident = has_identity(rows)
    cols = [("psnr_y", 2, max), ("ssim_y", 4, max)] + ([(pk, 4, min if pk in LOWER_IS_BETTER else max)] if pk else []) \
        + ([(IDENTITY, 3, min)] if ident else [])
    best = {k: pick(r[k] for r in rows if r.get(k) is not None) for k, _, pick in cols}
    bic = bicubic_psnr(rows)

    def cell(r, k, d):
        if r.get(k) is None:
            return "--"
        s = f"{r[k]:.{d}f}"
        return f"\\textbf{{{s}}}" if f"{r[k]:.{d}f}" == f"{best[k]:.{d}f}" else s

    ptitle = PERCEPTUAL_TITLES.get(pk, tex(pk)) if pk else None
    arrow = "" if pk is None else (r"$\downarrow$" if pk in LOWER_IS_BETTER else r"$\uparrow$")
    head = ["Method", r"PSNR(Y)$\uparrow$", r"$\Delta$ bicubic", r"SSIM(Y)$\uparrow$"] + \
        ([ptitle + arrow] if pk else []) + ["HF ratio", r"lattice$\downarrow$", r"spectral$\downarrow$"] + \
        ([r"identity$\downarrow$"] if ident else [])
    out = [header("Code/results/evaluation.json"),
           "\\begin{tabular}{l" + "r" * (len(head) - 1) + "}", "\\toprule", " & ".join(head) + " \\\\", "\\midrule"]
    for r in rows:
        d = delta_psnr(r, bic)
        delta = "--" if d is None or r["method"] == "bicubic" else f"{d:+.2f}"
        cells = [method_label(r["method"], r.get("strength")), cell(r, "psnr_y", 2), delta, cell(r, "ssim_y", 4)]
        if pk:
            cells.append(cell(r, pk, 4))
        cells.append("--" if r.get("hf_ratio") is None else f"{r['hf_ratio']:.3f}")
        cells.append("--" if r.get("lattice") is None else f"{r['lattice']:.2f}")
        cells.append("--" if r.get("spectral") is None else f"{r['spectral']:.3f}")
        if ident:
            cells.append(cell(r, IDENTITY, 3))
        out.append(" & ".join(cells) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(out)


def quality_caption(report: dict, set_name: str, scale: int) -> str:
    """The caption, with what a reader must know: targets without a face, methods run on fewer images."""
    rows = task_rows(report, set_name, scale)
    n = max((r.get("n_images", 0) for r in rows), default="?")
    notes = []
    if set_name in FACE_SETS and has_identity(rows):
        missed = rows[0].get("identity_missed") or 0
        notes.append("Identity: distance of dlib's face descriptors from the target's (lower is better)" +
                     (f"; {missed} of the {n} targets showed no face and are left out of it" if missed else "") + ".")
    for r in rows:
        same = r.get("bicubic_same_images")
        if same:
            notes.append(f"{method_label(r['method'], r.get('strength'))} ran on {r['n_images']} of the {n} images; "
                         f"its $\\Delta$ is against bicubic on those ({same['psnr_y']:.2f}\\,dB" +
                         (f", identity {same[IDENTITY]:.3f}" if same.get(IDENTITY) is not None else "") + ").")
    return f"{tex(set_title(set_name, caption=True))}, $\\times{scale}$ ({n} images)." + "".join(" " + x for x in notes)


def _range(v) -> str:
    return f"{v[0]:g}--{v[1]:g}" if isinstance(v, (list, tuple)) else f"{v:g}"


def _round_tex(r: dict, sigma_note: str = "") -> str:
    up, down, keep = r["resize_probs"]
    return (f"blur with probability {r['blur_prob']:g} ($\\sigma$ {_range(r['blur_sigma'])}{sigma_note}, Gaussian or "
            "generalised Gaussian, isotropic or not), a resize (up / down / kept with probabilities "
            f"{up:g} / {down:g} / {keep:g}, factor {_range(r['resize_range'])}), "
            f"noise with probability {r['noise_prob']:g} (Gaussian, "
            f"$\\sigma$ {_range(r['noise_sigma'])} grey levels, or Poisson $\\times${_range(r['poisson_scale'])}; "
            f"{r['gray_noise_prob'] * 100:.0f}\\,\\% luma only) and JPEG with probability {r['jpeg_prob']:g} (quality "
            f"{_range(r['jpeg_quality'])})")


def realworld_tex(report: dict) -> str:
    """The real-world sets' paragraph: the chain as evaluation.json records it, Real-ESRGAN's setting, identity."""
    deg = report.get("degradation") or {}
    if not deg:
        return NOT_MEASURED + " (no real-world set in this evaluation)\n"
    times = ", $\\times$"
    sets = ", ".join(f"\\texttt{{{tex(s)}}} ($\\times${times.join(sorted(v, key=int, reverse=True))})"
                     for s, v in deg.items())
    d = next(iter(next(iter(deg.values())).values()))
    first = _round_tex(d["first"], " high-resolution pixels at $\\times4$")
    out = [f"The real-world sets ({sets}) take the high-resolution images of the clean sets and degrade each once by "
           "the real-world chain training uses (\\texttt{RealWorld} in \\texttt{superres.training.degradations}), "
           "seeded by "
           f"the file name so that every run sees the same inputs. Round 1: {first}. "
           f"Round 2, with probability {d['second_prob']:g}: {_round_tex(d['second'])}. Then a resize to the "
           f"low-resolution size (area, bilinear or bicubic) and JPEG at a quality in [{_range(d['final_jpeg'])}]."]
    gan = report.get("realesrgan")
    if gan:
        n = sum(len(v) for v in gan.get("images", {}).values())
        x2 = tex(gan['x2']).replace('--', '-{}-')
        out.append(f"Real-ESRGAN ({tex(gan['model'])}, {tex(gan['backend'])}; $\\times2$ is {x2}) ran on "
                   + (f"at most {gan['limit']} images of each real-world set and scale (the sample faces and an even "
                      "spread)" if gan.get("limit") else "every image of the real-world sets")
                   + f", {n} in all, at {gan['cpu_seconds_per_image']:.1f} CPU-seconds per image.")
    if report.get("identity"):
        out.append("The identity distance is the Euclidean distance between dlib's ResNet face descriptors of the "
                   "output and of the target (5-point alignment); the face is found on the target by dlib's HOG "
                   "detector and its box reused on every output, so that no method is excused by a missed "
                   "detection. Lower is better; dlib's threshold for the same person is 0.6.")
    return "\n".join(out) + "\n"


def speed_key(r: dict) -> str:
    """x4 rows keep their old keys (method, tile); other scales add theirs."""
    tile = (r.get("options") or {}).get("tile")
    scale = r.get("scale", 4)
    return r["method"] + ("" if tile is None else f"-tile{tile}") + ("" if scale == 4 else f"-x{scale}")


def speed_label(r: dict) -> str:
    tile = (r.get("options") or {}).get("tile")
    extra = "" if tile is None else (", whole image" if tile == 0 else f", tiles {tex(tile)}")
    return method_label(r["method"], r.get("strength")) + extra


def speed_tabular(report: dict) -> str:
    out = [header("Code/results/evaluation.json"), "\\begin{tabular}{lrrrrr}", "\\toprule",
           "Method & scale & s / image & MP/s (output) & peak RSS (MB) & load (s) \\\\", "\\midrule"]
    for r in report.get("speed", []):
        out.append(f"{speed_label(r)} & $\\times{r.get('scale', 4)}$ & {num(r.get('seconds_per_image'), 3)} & "
                   f"{num(r.get('megapixels_per_s'), 2)} & "
                   f"{num(r.get('peak_rss_mb'), 0)} & {num(r.get('load_seconds'), 2)} \\\\")
    out += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(out)


def targets_tabular(targets: list[dict], measured: bool = True) -> str:
    cols = "p{0.5\\linewidth}rrc" if measured else "p{0.9\\linewidth}"
    head = "Target & measured & required & met \\\\" if measured else "Target \\\\"
    out = [header("the evaluation targets"), f"\\begin{{tabular}}{{{cols}}}", "\\toprule", head, "\\midrule"]
    for t in targets:
        if measured:
            met = {True: "yes", False: "\\textbf{no}", None: NOT_MEASURED}[t.get("passed")]
            out.append(f"{tex(t['description'])} & {num(t.get('measured'), 2)} & {num(t.get('required'), 2)} & "
                       f"{met} \\\\")
        else:
            out.append(f"{tex(t['description'])} \\\\")
    out += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(out)


def findings(report: dict, short: bool = False) -> str:
    """One item per set, x4 first: our faithful, default and GAN outputs against bicubic and LapSRN
    (`short`: x4 only, strengths 0 and 1, for a slide)."""
    items = []
    default_s = None if short else (report.get("model_card") or {}).get("default_strength")
    for set_name, scale in sorted(tasks(report), key=lambda t: (-t[1],)):
        if short and scale != 4:
            continue
        rows = task_rows(report, set_name, scale)
        bic = bicubic_psnr(rows)
        parts = [] if short or bic is None else [f"bicubic {bic:.2f}\\,dB"]
        for r in rows:
            if (r["method"] == "ours" and r.get("strength") in (0.0, default_s, 1.0)
                    or r["method"] in ("lapsrn", "realesrgan")):
                d = "" if delta_psnr(r, bic) is None else f" ({delta_psnr(r, bic):+.2f})"
                parts.append(f"{method_label(r['method'], r.get('strength'))} {r['psnr_y']:.2f}\\,dB{d}")
        pk = perceptual_key(rows)
        best = ""
        if pk and not short:
            pick = min if pk in LOWER_IS_BETTER else max
            b = pick(rows, key=lambda r: r[pk])
            best = (f"; best {PERCEPTUAL_TITLES.get(pk, tex(pk))}: {method_label(b['method'], b.get('strength'))} "
                    f"({b[pk]:.4f})")
        if parts:
            title = tex(set_title(set_name, caption=True))
            items.append(f"\\item {title} $\\times{scale}$: " + ", ".join(parts) + best + ".")
    return "\n".join(["\\begin{itemize}", *items, "\\end{itemize}", ""]) if items else NOT_MEASURED + "\n"


def eval_files(report: dict | None) -> dict[str, str]:
    """The generated .tex files that come from evaluation.json alone (the test compares them byte for byte)."""
    src = "Code/results/evaluation.json"
    lookups = [header(src), "\\makeatletter"]
    files = {}
    if report is None:
        lookups += ["\\evalavailablefalse", "\\renewcommand{\\EvalCreated}{\\notmeasured{}}",
                    "\\renewcommand{\\EvalCommand}{\\notmeasured{}}", "\\renewcommand{\\EvalMachine}{\\notmeasured{}}",
                    "\\renewcommand{\\EvalModel}{\\notmeasured{}}", "\\makeatother", ""]
        files["eval_meta.tex"] = "\n".join(lookups)
        files["eval_findings.tex"] = header(src) + NOT_MEASURED + "\n"
        files["eval_findings_short.tex"] = header(src) + NOT_MEASURED + "\n"
        files["eval_all_quality.tex"] = (header(src) + "\\par\\notmeasured{} "
                                         "(no \\texttt{Code/results/evaluation.json} yet)\\par\n")
        return files
    m = report.get("machine", {})
    card = report.get("model_card") or {}
    model = "no model" if not card else (
        f"{tex(card.get('name'))}, exported {tex(card.get('created'))}, "
        f"default strength {card.get('default_strength')}")
    lookups += ["\\evalavailabletrue",
                f"\\renewcommand{{\\EvalCreated}}{{{tex(report.get('created', '?'))}}}",
                f"\\renewcommand{{\\EvalCommand}}{{\\texttt{{{tex(report.get('command', '?'))}}}}}",
                f"\\renewcommand{{\\EvalMachine}}{{{tex(m.get('cpu', '?'))}, {m.get('cores', '?')} cores, load average "
                f"{m.get('loadavg_start', '?')} at the start}}",
                f"\\renewcommand{{\\EvalModel}}{{{model}}}"]
    if card.get("untrained"):
        lookups.append("\\evaluntrainedtrue")
    if report.get("limit"):
        lookups.append(f"\\renewcommand{{\\EvalLimit}}{{{int(report['limit'])}}}")
    for set_name, scale in tasks(report):
        rows = task_rows(report, set_name, scale)
        bic = bicubic_psnr(rows)
        pk = perceptual_key(rows)
        fname = f"eval_quality_{set_name}_x{scale}.tex"
        files[fname] = quality_tabular(report, set_name, scale)
        lookups.append(define("table", f"{set_name}@{scale}", f"\\input{{\\GenDir/{fname[:-4]}}}"))
        lookups.append(define("caption", f"{set_name}@{scale}", quality_caption(report, set_name, scale)))
        for r in rows:
            key = f"{set_name}@{scale}@{method_key(r['method'], r.get('strength'))}"
            for k, d in (("psnr_y", 2), ("ssim_y", 4), ("hf_ratio", 3), ("lattice", 2), ("spectral", 3),
                         (IDENTITY, 3)) + (((pk, 4),) if pk else ()):
                if r.get(k) is not None:
                    lookups.append(define("q", f"{key}@{k}", f"{r[k]:.{d}f}"))
            if pk:
                lookups.append(define("q", f"{key}@perceptual", f"{r[pk]:.4f}"))
            if delta_psnr(r, bic) is not None:
                lookups.append(define("q", f"{key}@delta", f"{delta_psnr(r, bic):+.2f}"))
            lookups.append(define("q", f"{key}@n", str(r.get("n_images", "?"))))
        if pk:
            lookups.append(define("q", "perceptualname", PERCEPTUAL_TITLES.get(pk, tex(pk))))
    if report.get("speed"):
        files["eval_speed.tex"] = speed_tabular(report)
        sp = report["speed"][0]
        lookups.append(f"\\renewcommand{{\\SpeedSetup}}{{$\\times{sp.get('scale', '?')}$, {tex(sp.get('input', '?'))} "
                       f"$\\to$ {tex(sp.get('output', '?'))}, median of {sp.get('runs', '?')} runs after a warm-up, "
                       "each method in its own process}")
        for macro, key in (("SpeedInput", "input"), ("SpeedOutput", "output")):
            size = tex(sp.get(key, "?")).replace("x", r"$\times$")
            lookups.append(f"\\renewcommand{{\\{macro}}}{{{size}}}")
        for r in report["speed"]:
            for k, d in (("seconds_per_image", 3), ("megapixels_per_s", 2), ("peak_rss_mb", 0)):
                if r.get(k) is not None:
                    lookups.append(define("speed", f"{speed_key(r)}@{k}", f"{r[k]:.{d}f}"))
    if report.get("targets"):
        files["eval_targets.tex"] = targets_tabular(report["targets"])
    lookups += ["\\makeatother", ""]
    files["eval_meta.tex"] = "\n".join(lookups)
    files["eval_findings.tex"] = (header(src) + "PSNR(Y), in brackets the difference to bicubic in dB.\n"
                                  + findings(report))
    files["eval_findings_short.tex"] = header(src) + findings(report, short=True)
    if report.get("degradation"):     # Report/report.tex includes it where it exists
        files["eval_realworld.tex"] = header(src) + realworld_tex(report)
    allq = [header(src)]
    for set_name, scale in tasks(report):
        # 9 columns with identity
        narrow = ["\\setlength{\\tabcolsep}{4pt}"] if has_identity(task_rows(report, set_name, scale)) else []
        allq += ["\\begin{table}[htbp]", "\\centering\\small", *narrow,
                 f"\\caption{{{quality_caption(report, set_name, scale)}}}",
                 f"\\label{{tab:{set_name}-x{scale}}}", f"\\input{{\\GenDir/eval_quality_{set_name}_x{scale}}}",
                 "\\end{table}", ""]
    files["eval_all_quality.tex"] = "\n".join(allq)
    return files




def plan_files() -> dict[str, str]:
    """The targets the model is held to, as `superres.evaluation.results` checks them, without measurements (the
    plan)."""
    return {"plan_targets.tex": targets_tabular(check_targets([], [], 0.5), measured=False)}


def consistency_files(report: dict | None, card: dict | None, card_path: Path) -> dict[str, str]:
    """A warning in the documents when evaluation.json scored another model than the shipped one."""
    note = ""
    if report and card and report.get("model_card"):
        want = (card.get("sha256") or {})
        got = report["model_card"].get("sha256") or {}
        if want and got and want != got:
            note = ("\\textbf{Note:} the evaluation scored a model whose files differ from the shipped "
                    f"\\texttt{{{tex(card_path.parent.name)}}} (sha256 mismatch); "
                    "rerun \\texttt{python -m superres evaluate}.")
    if report and (report.get("model_card") or {}).get("untrained"):
        note += (" \\textbf{These evaluation numbers are of random-weight (untrained) networks: a check of the "
                 "pipeline, not results.}")
    return {"consistency.tex": header("evaluation.json and the model card") + note + "\n"}




def samples_tex(samples_dir: Path, root: Path = REPO) -> str:
    """\\samplegrids (the clean portraits' crops and close-ups) and, where there are any, \\realgrids (the
    real-world faces' close-ups, *_real.png)."""
    files = sorted(Path(samples_dir).glob("*.png")) if Path(samples_dir).is_dir() else []
    if not files:
        return header("Code/results/samples") + "\\renewcommand{\\samplegrids}{\\notmeasured{} (no sample grids yet)}\n"

    def include(p: Path) -> str:
        stem = p.stem.replace("_x4", "").replace("_x2", "")
        p = p.resolve()
        inside = p.is_relative_to(root.resolve())
        where = f"\\RepoRoot/{p.relative_to(root.resolve()).as_posix()}" if inside else p.as_posix()
        return (f"\\includegraphics[width=\\linewidth]{{{where}}}\\\\[-0.3ex]"
                f"{{\\tiny {tex(stem)}: {credit(stem, latex=True)}}}\\\\[0.8ex]")
    clean = [p for p in files if not p.stem.endswith("_real")]
    real = [p for p in files if p.stem.endswith("_real")]
    out = header("Code/results/samples") + ("\\renewcommand{\\samplegrids}{%\n" + "\n".join(map(include, clean)) + "}\n"
                                            f"\\renewcommand{{\\samplecount}}{{{len(clean)}}}\n" if clean else
                                            "\\renewcommand{\\samplegrids}{\\notmeasured{} (no sample grids yet)}\n")
    if real:
        out += "\\renewcommand{\\realgrids}{%\n" + "\n".join(map(include, real)) + "}\n" \
            f"\\renewcommand{{\\realcount}}{{{len(real)}}}\n"
    return out
