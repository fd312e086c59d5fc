"""python -m superres report: rebuild the write-up (report, both decks, figures, tables) from the project's runs.

    python -m superres report              # everything: generated files, arch_srgan.png, then the three PDFs
    python -m superres report --no-pdf     # only the generated files and figures (no LaTeX needed)
    python -m superres report --measure    # after `export`: first remake what needs torch
                                           # (superres.writeup.report_torch)

Without --measure the report imports neither torch nor fastai.

Every number and figure in the documents comes from these inputs; whatever is missing is written as
"not yet measured" (never a typed-in number):
    Code/results/evaluation.json, Code/results/samples/*.png   (python -m superres evaluate)
    Code/superres/default_model/model_card.json                 (python -m superres export)
    runs/<run>/record.json, runs/<run>/logs/*.csv               (python -m superres train)
    Report/generated/networks.json, degradations.png             (python -m superres report --measure)
The run is the one whose record.json has the model card's x4 stages (the run the shipped x4 model comes from).
Runs are not in git (runs/ is ignored), so a copy is kept in Report/generated/run/ and used where no
matching run exists: a fresh clone rebuilds the same curves.

Writes Report/generated/ (*.tex includes, figures), arch_srgan.png at the repository root, and with LaTeX
(Debian: texlive-latex-recommended texlive-latex-extra latexmk) Report/report.pdf,
Presentations/Initial/initial.pdf and Presentations/Final/final.pdf.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from superres.evaluation.evaluation_output import README_BEGIN, with_readme_results
from superres.evaluation.results import PERCEPTUAL_TITLES, load_json, perceptual_key, task_rows, tasks
from superres.runtime.imaging import image_files
from superres.writeup.arch_diagram import draw
from superres.writeup.latex import header, tex
from superres.writeup.report_eval import consistency_files, eval_files, plan_files, samples_tex
from superres.writeup.report_model import (
    MAIN_SCALE,
    NETWORKS_JSON,
    STAGES,
    arch_files,
    card_scale,
    degradation_source,
    model_files,
    networks_description,
)

REPO = Path(__file__).resolve().parents[3]
DEFAULT_EVALUATION = REPO / "Code" / "results" / "evaluation.json"
ARCH_PNG = REPO / "arch_srgan.png"
DOCS = {"report": "Report/report.tex", "initial": "Presentations/Initial/initial.tex",
        "final": "Presentations/Final/final.tex"}     # relative to the repository root


# ---- figures ---------------------------------------------------------------------------------------
def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"font.size": 10, "axes.grid": True, "grid.alpha": 0.3, "pdf.fonttype": 42})
    return plt


def read_logs(log_dir: Path) -> dict[str, list[dict]]:
    logs = {}
    for stage in STAGES:
        p = Path(log_dir) / f"{stage}.csv"
        if p.is_file():
            rows = [r for r in csv.DictReader(io.StringIO(p.read_text())) if r.get("epoch", "").strip().isdigit()]
            if rows:
                logs[stage] = rows
    return logs


def training_curves(logs: dict, path: Path) -> bool:
    if not logs:
        return False
    plt = _plt()
    ncols = min(2, len(logs))
    nrows = (len(logs) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.9 * nrows), squeeze=False)
    for ax in axes.flat[len(logs):]:
        ax.set_visible(False)
    for ax, (stage, rows) in zip(axes.flat, logs.items(), strict=False):   # the grid's last row may have spare axes
        ep = [int(r["epoch"]) + 1 for r in rows]
        cols = ("gen_loss", "crit_loss") if "gen_loss" in rows[0] else ("train_loss", "valid_loss")
        for col in cols:
            vals = [float(r[col]) if r.get(col) not in (None, "", "None") else math.nan for r in rows]
            ax.plot(ep, vals, "o-", ms=3, label=col.replace("_", " "))
        ax.set_title(stage)
        ax.set_xlabel("epoch", labelpad=1)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlim(0.5, max(ep) + 0.5)
        metric = next((m for m in ("psnr_y", "accuracy_thresh_expand") if m in rows[0]), None)
        if metric:
            ax2 = ax.twinx()
            ax2.grid(False)
            ax2.plot(ep, [float(r[metric]) for r in rows], "s--", ms=3, color="tab:green",
                     label="valid PSNR(Y)" if metric == "psnr_y" else "critic accuracy")
            ax2.set_ylabel("PSNR(Y) dB" if metric == "psnr_y" else "accuracy", color="tab:green")
            h1, l1 = ax.get_legend_handles_labels()
            h2, l2 = ax2.get_legend_handles_labels()
            ax.legend(h1 + h2, l1 + l2, fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2,
                      frameon=False)
        else:
            ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, metadata={"CreationDate": None})
    plt.close(fig)
    return True


def strength_figure(report: dict | None, path: Path) -> bool:
    """Ours against strength, per set at x4 (PSNR, perceptual score, HF ratio), bicubic and LapSRN as lines."""
    if not report:
        return False
    panels = [(s, sc) for s, sc in tasks(report) if sc == 4 and
              len({r.get("strength") for r in task_rows(report, s, sc) if r["method"] == "ours"}) >= 2]
    if not panels:
        return False
    plt = _plt()
    pk = perceptual_key(report["quality"])
    metrics = [("psnr_y", "PSNR(Y) dB"), *([(pk, PERCEPTUAL_TITLES.get(pk, pk))] if pk else []),
               ("hf_ratio", "HF ratio")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 2.8), squeeze=False)
    for ax, (k, title) in zip(axes[0], metrics, strict=True):
        for i, (s, sc) in enumerate(panels):
            rows = task_rows(report, s, sc)
            ours = [r for r in rows if r["method"] == "ours"]
            color = f"C{i}"
            ax.plot([r["strength"] for r in ours], [r[k] for r in ours], "o-", color=color, label=s)
            for method, ls in (("bicubic", ":"), ("lapsrn", "--")):
                ref = next((r for r in rows if r["method"] == method), None)
                if ref is not None:
                    ax.axhline(ref[k], color=color, ls=ls, lw=1)
        if k == "hf_ratio":
            ax.axhline(1.0, color="black", lw=0.8)
        ax.set_title(title)
        ax.set_xlabel("strength $s$")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, [f"ours, {lb} x4" for lb in labels], loc="lower center", ncol=len(labels), fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, metadata={"CreationDate": None})
    plt.close(fig)
    return True


# ---- the run snapshot ------------------------------------------------------------------------------
def snapshot_run(run_dir: Path, snap: Path, log=print) -> tuple[dict | None, dict, dict | None]:
    """Copy the run's record and logs into `snap` when the run exists; return (record, logs, data counts)
    from the snapshot."""
    run_dir = Path(run_dir)
    if (run_dir / "record.json").is_file():
        (snap / "logs").mkdir(parents=True, exist_ok=True)
        record = json.loads((run_dir / "record.json").read_text())
        (snap / "record.json").write_text(json.dumps(record, indent=1) + "\n")
        for stage in STAGES:
            src = run_dir / "logs" / f"{stage}.csv"
            if src.is_file() and src.stat().st_size:
                shutil.copyfile(src, snap / "logs" / f"{stage}.csv")
            elif (snap / "logs" / f"{stage}.csv").is_file():
                (snap / "logs" / f"{stage}.csv").unlink()
        cfg = record.get("config", {})
        counts = {}
        for key in ("data", "valid"):
            n = 0
            for folder in (cfg.get(key) or "").split(","):
                folder = Path(folder) if Path(folder).is_absolute() else REPO / folder
                if not folder.is_dir():   # trained elsewhere (a lent GPU): the same folder of ../shared/data
                    folder = REPO.parent / "shared" / "data" / Path(*folder.parts[-2:])
                try:
                    n += len(image_files(folder))
                except (FileNotFoundError, TypeError):
                    n = 0
                    break
            if n:
                counts[{"data": "train", "valid": "valid"}[key]] = n
        if counts:
            (snap / "data_counts.json").write_text(json.dumps(counts) + "\n")
        where = snap.relative_to(REPO) if snap.is_relative_to(REPO) else snap
        log(f"report: training record and logs of {run_dir} copied to {where}")
    record = load_json(snap / "record.json")
    counts = load_json(snap / "data_counts.json")
    return record, read_logs(snap / "logs"), counts


# ---- build -----------------------------------------------------------------------------------------
def write_files(files: dict[str, str], out: Path, prefix: str | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if prefix:
        for old in out.glob(prefix + "*.tex"):
            if old.name not in files:
                old.unlink()
    for name, text in files.items():
        p = out / name
        if not p.is_file() or p.read_text() != text:
            p.write_text(text)


def find_run(card: dict | None, runs=REPO / "runs") -> Path | None:
    """The training run the model card's main scale was exported from: the runs/*/ whose record.json has the
    card's stages."""
    stages = ((card or {}).get("stages") or {}).get(MAIN_SCALE)
    if not stages or not Path(runs).is_dir():
        return None
    for rec in sorted(Path(runs).glob("*/record.json")):
        try:
            if json.loads(rec.read_text()).get("stages") == stages:
                return rec.parent
        except (OSError, ValueError):
            continue
    return None


def generate(root=REPO, evaluation=None, model_dir=None, run_dir="auto", samples_dir=None, measure=False,
             log=print) -> dict:
    """Write every generated input of the documents under `root` (Report/generated/ and arch_srgan.png);
    returns what was available. `root` is the repository, or a copy of its Report/ and Presentations/.
    `measure`: first remake the inputs that need torch (superres.writeup.report_torch); otherwise none is imported."""
    from superres import DEFAULT_MODEL_DIR
    t0 = time.perf_counter()
    root = Path(root)
    out = root / "Report" / "generated"
    out.mkdir(parents=True, exist_ok=True)
    evaluation = Path(evaluation) if evaluation else DEFAULT_EVALUATION
    card_path = Path(model_dir or DEFAULT_MODEL_DIR) / "model_card.json"
    report, card = load_json(evaluation), load_json(card_path)
    samples_dir = Path(samples_dir) if samples_dir else evaluation.parent / "samples"
    if run_dir == "auto":   # the run that made the shipped models; else the snapshot already in generated/run
        run_dir = find_run(card)
        if run_dir is None:
            log("report: no run under runs/ matches the model card's stages; using Report/generated/run/ as it is")
    record, logs, counts = snapshot_run(Path(run_dir) if run_dir else out / "none", out / "run", log)
    if card and record and not card.get("untrained") and record.get("stages") != card_scale(card, "stages"):
        log("report: the training record is not the model card's run: its curves and settings are left out")
        record, logs = None, {}
    if measure:
        from superres.writeup.report_torch import measure as measure_networks
        measure_networks(card, record, out, _plt())
    desc = networks_description(out / NETWORKS_JSON, card)   # a stale one stops the build before any table

    write_files(eval_files(report), out, prefix="eval_")
    write_files(model_files(card, record, counts), out)
    write_files(plan_files(), out)
    write_files(consistency_files(report, card, card_path), out)
    write_files({"samples.tex": samples_tex(samples_dir, root)}, out)
    readme = root / "README.md"   # its results tables, between the markers (absent in a copy of Report/ only)
    if report and readme.exists() and README_BEGIN in readme.read_text():
        readme.write_text(with_readme_results(readme.read_text(), report))

    write_files(arch_files(desc), out)
    draw(desc, root / ARCH_PNG.name)
    figs = {"training_curves": training_curves(logs, out / "training_curves.pdf"),
            "strength": strength_figure(report, out / "strength.pdf")}
    source = degradation_source(card, record)
    flags = [header("what exists"), f"\\renewcommand{{\\DegradationSource}}{{{tex(source)}}}"]
    for name, ok in figs.items():
        if not ok and (out / f"{name}.pdf").exists():
            (out / f"{name}.pdf").unlink()
        flags.append(f"\\figure{name.replace('_', '')}{'true' if ok else 'false'}")
    write_files({"figures.tex": "\n".join(flags) + "\n"}, out)
    log(f"report: generated files in {out} ({'with' if report else 'without'} evaluation.json, "
        f"{'with' if card else 'without'} model card, {len(logs)} training logs) in {time.perf_counter() - t0:.0f} s")
    return {"evaluation": report is not None, "model_card": card is not None, "logs": sorted(logs)}


def build_pdf(tex_path: Path, log=print) -> Path:
    """latexmk into <dir>/build/, then copy the PDF next to its source."""
    if not shutil.which("latexmk"):
        raise RuntimeError("latexmk not found: apt-get install -y --no-install-recommends texlive-latex-recommended "
                           "texlive-latex-extra latexmk   (or run with --no-pdf)")
    tex_path = Path(tex_path).resolve()
    bib = next((p / "Report" for p in tex_path.parents if (p / "Report" / "references.bib").is_file()), tex_path.parent)
    # the decks share Report/references.bib; bibtex runs inside build/, so it is found through BIBINPUTS
    env = {**os.environ, "BIBINPUTS": f"{bib}{os.pathsep}{os.environ.get('BIBINPUTS', '')}",
           "SOURCE_DATE_EPOCH": os.environ.get("SOURCE_DATE_EPOCH", "1767225600"), "FORCE_SOURCE_DATE": "1"}
    cmd = ["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", "-file-line-error", "-outdir=build",
           "-cd", str(tex_path)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    pdf = tex_path.parent / "build" / (tex_path.stem + ".pdf")
    if proc.returncode or not pdf.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise RuntimeError(f"latexmk failed on {tex_path}:\n{tail}")
    dest = tex_path.with_suffix(".pdf")
    shutil.copyfile(pdf, dest)
    log(f"report: {dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest} in {time.perf_counter() - t0:.0f} s")
    return dest


# ---- CLI -------------------------------------------------------------------------------------------
def add_arguments(p):
    p.add_argument("--evaluation", default=str(DEFAULT_EVALUATION),
                   help="evaluation.json (python -m superres evaluate)")
    p.add_argument("--model-dir", default=None,
                   help="model folder with model_card.json (default: superres/default_model)")
    p.add_argument("--run", default="auto", help="training run folder (record.json, logs/); default: the runs/*/ "
                   "whose record matches the model card's stages, else the copy in Report/generated/run/")
    p.add_argument("--no-pdf", action="store_true", help="write the generated files only, run no LaTeX")
    p.add_argument("--measure", action="store_true", help="first remake Report/generated/networks.json and "
                   "degradations.png with torch (after `export`); without it the report imports neither torch "
                   "nor fastai")
    p.add_argument("--docs", default=",".join(DOCS), help="which PDFs to build: " + ",".join(DOCS))


def run(args) -> int:
    t0 = time.perf_counter()
    try:
        generate(REPO, args.evaluation, args.model_dir, args.run, measure=args.measure)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.no_pdf:
        try:
            for name in [d for d in args.docs.split(",") if d]:
                build_pdf(REPO / DOCS[name])
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    print(f"report: done in {time.perf_counter() - t0:.0f} s")
    return 0
