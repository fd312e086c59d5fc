"""The write-up (`python -m superres report`): its tables say what evaluation.json says, the architecture
diagram is drawn from the real networks, and (where LaTeX is installed) the documents build.

The committed check: Report/generated/eval_*.tex equal what `superres.writeup.report_eval.eval_files` makes from the
committed Code/results/evaluation.json (or its absence), byte for byte, and every number of every quality row
in the JSON appears in its table's row. A synthetic evaluation.json (made here, never committed as a result)
exercises the same code on a full set of rows.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require
from superres.evaluation.results import load_json
from superres.writeup import report as rp
from superres.writeup.latex import tex
from superres.writeup.report_eval import eval_files, method_label
from superres.writeup.report_model import _fmt_params, arch_files

REPO = Path(__file__).resolve().parents[2]
EVALUATION = REPO / "Code" / "results" / "evaluation.json"
GENERATED = REPO / "Report" / "generated"


def synthetic_evaluation() -> dict:
    """An evaluation.json in `superres evaluate`'s schema, with arbitrary numbers (a fixture, not a result)."""
    quality = []
    sets = [("portraits512", (4, 2)), ("portraits512_jpeg40", (4,)), ("Set5", (4, 2)), ("BSD100", (4,))]
    for si, (set_name, scales) in enumerate(sets):
        for scale in scales:
            base = 30.0 - 2 * si - (scale == 4) * 3
            methods = [("bicubic", None, 0.0), ("lanczos", None, 0.1), ("fsrcnn", None, 0.5), ("espcn", None, 0.4),
                       ("lapsrn", None, 0.7), ("ours", 0.0, 1.2), ("ours", 0.5, 0.9), ("ours", 1.0, 0.3)]
            for k, (m, s, gain) in enumerate(methods):
                quality.append({"set": set_name, "scale": scale, "method": m, "strength": s, "n_images": 5 + si,
                                "psnr_y": round(base + gain + 0.0123 * k, 3), "ssim_y": round(0.8 + 0.01 * gain, 4),
                                "haarpsi": round(0.6 + 0.05 * (s or 0) + 0.01 * k, 4),
                                "hf_ratio": round(0.6 + 0.4 * (s if s is not None else gain), 4),
                                "lattice": round(1.5 + 3 * (s or 0), 3), "spectral": round(1.0 - 0.5 * (s or 0), 4)})
    speed = [{"method": m, "strength": s, "options": o, "input": "256x256", "output": "1024x1024", "scale": 4,
              "runs": 5, "seconds_per_image": t, "min_seconds": t, "megapixels_per_s": round(1.048576 / t, 3),
              "load_seconds": 0.5, "peak_rss_mb": rss}
             for m, s, o, t, rss in [("bicubic", None, {}, 0.004, 80.0), ("lapsrn", None, {}, 2.5, 300.0),
                                     ("ours", 0.5, {"tile": "auto"}, 0.3, 400.0),
                                     ("ours", 0.5, {"tile": 0}, 0.28, 900.0)]]
    targets = [{"id": "set5_x4_s0", "description": "Set5 x4, strength 0: PSNR(Y) >= 30.72 dB", "measured": 24.5,
                "required": 30.72, "passed": False},
               {"id": "speed", "description": "x4 256->1024: <= 0.35 s per image", "measured": 0.3, "required": 0.35,
                "passed": True}]
    return {"format": 1, "created": "2030-01-01T00:00:00+00:00", "command": "python -m superres evaluate --limit 5",
            "data_root": "/data", "limit": 5,
            "machine": {"cpu": "Synthetic CPU", "cores": 2, "threads": 2, "loadavg_start": 1.0},
            "model_card": {"dir": "m", "name": "superres-portrait", "created": "2030-01-01", "untrained": False,
                           "default_strength": 0.5, "sha256": {}},
            "quality": quality, "speed": speed, "targets": targets}


def table_rows(tex: str) -> dict[str, list[str]]:
    """{method label: cells} from a generated tabular (bold markers removed)."""
    rows = {}
    body = tex.split("\\midrule", 1)[1].split("\\bottomrule", 1)[0]
    for line in body.strip().splitlines():
        cells = [re.sub(r"\\textbf\{([^}]*)\}", r"\1", c).strip() for c in line.rstrip("\\ ").split(" & ")]
        rows[cells[0]] = cells[1:]
    return rows


def check_quality_tables(report: dict, files: dict) -> int:
    """Every number of every quality row appears, formatted, in its table's row; returns the rows checked."""
    checked = 0
    for r in report["quality"]:
        name = f"eval_quality_{r['set']}_x{r['scale']}.tex"
        assert name in files, f"no table for {r['set']} x{r['scale']}"
        rows = table_rows(files[name])
        label = method_label(r["method"], r["strength"])
        assert label in rows, f"{label} missing from {name}"
        cells = rows[label]
        assert cells[0] == f"{r['psnr_y']:.2f}"
        assert cells[2] == f"{r['ssim_y']:.4f}"
        assert cells[3] == f"{r['haarpsi']:.4f}"
        assert cells[4] == f"{r['hf_ratio']:.3f}"
        assert cells[5] == ("--" if r.get("lattice") is None else f"{r['lattice']:.2f}")
        assert cells[6] == ("--" if r.get("spectral") is None else f"{r['spectral']:.3f}")
        bic = next(b for b in report["quality"]
                   if (b["set"], b["scale"], b["method"]) == (r["set"], r["scale"], "bicubic"))
        ref = r.get("bicubic_same_images") or bic   # Real-ESRGAN runs on a subset: its delta is on those images
        assert cells[1] == ("--" if r["method"] == "bicubic" else f"{r['psnr_y'] - ref['psnr_y']:+.2f}")
        checked += 1
    n_tables = len({(r["set"], r["scale"]) for r in report["quality"]})
    assert len([f for f in files if f.startswith("eval_quality_")]) == n_tables
    return checked


# ---- the committed files ---------------------------------------------------------------------------
def test_generated_tables_match_committed_evaluation_json():
    """Report/generated/eval_*.tex are exactly what the committed evaluation.json (or its absence) gives."""
    assert GENERATED.is_dir(), "Report/generated/ is missing: run `python -m superres report`"
    report = load_json(EVALUATION)
    want = eval_files(report)
    have = {p.name: p.read_text() for p in GENERATED.glob("eval_*.tex")}
    assert sorted(have) == sorted(want), "run `python -m superres report`: the generated files are stale"
    for name, text in want.items():
        assert have[name] == text, (f"Report/generated/{name} differs from evaluation.json: "
                                    "run `python -m superres report`")
    if report is None:
        assert "notmeasured" in have["eval_findings.tex"]
    else:
        assert check_quality_tables(report, have) == len(report["quality"])


def test_readme_tables_match_committed_evaluation_json():
    """The README's results tables are exactly what `python -m superres report` makes from evaluation.json."""
    from superres.evaluation.evaluation_output import README_BEGIN, README_END, readme_results
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index(README_BEGIN) + len(README_BEGIN):readme.index(README_END)]
    assert block.strip() == readme_results(load_json(EVALUATION)).strip(), \
        "README's results tables differ from evaluation.json: run `python -m superres report`"


def test_committed_pdfs_exist():
    for doc in rp.DOCS.values():
        pdf = (REPO / doc).with_suffix(".pdf")
        assert pdf.is_file() and pdf.stat().st_size > 10_000, f"{pdf} missing: run `python -m superres report`"


# ---- the generators on synthetic input ----------------------------------------------------------------
def test_tables_from_synthetic_evaluation():
    report = synthetic_evaluation()
    files = eval_files(report)
    assert check_quality_tables(report, files) == len(report["quality"])
    meta = files["eval_meta.tex"]
    # lookups for the prose, e.g. \evalq{portraits512}{4}{ours0}{psnr_y}
    r = next(q for q in report["quality"] if (q["set"], q["scale"], q["method"], q["strength"]) ==
             ("portraits512", 4, "ours", 0.0))
    assert f"\\csname sr@q@portraits512@4@ours0@psnr_y\\endcsname{{{r['psnr_y']:.2f}}}" in meta
    assert "\\evalavailabletrue" in meta and "Synthetic CPU" in meta
    speed = table_rows(files["eval_speed.tex"])
    assert speed["Ours ($s{=}0.5$), tiles auto"][:2] == ["$\\times4$", "0.300"]
    assert speed["Ours ($s{=}0.5$), whole image"][3] == "900"
    targets = files["eval_targets.tex"]
    assert "30.72" in targets and "\\textbf{no}" in targets and "yes" in targets
    # the best PSNR of a table is bold
    t = files["eval_quality_portraits512_x4.tex"]
    best = max(q["psnr_y"] for q in report["quality"] if (q["set"], q["scale"]) == ("portraits512", 4))
    assert f"\\textbf{{{best:.2f}}}" in t


def test_no_evaluation_says_not_measured():
    files = eval_files(None)
    assert set(files) == {"eval_meta.tex", "eval_findings.tex", "eval_findings_short.tex", "eval_all_quality.tex"}
    assert "\\evalavailablefalse" in files["eval_meta.tex"]
    assert all("notmeasured" in text for text in files.values())
    assert not re.search(r"\d+\.\d+", files["eval_findings.tex"] + files["eval_all_quality.tex"])


def test_tex_escaping():
    assert tex("a_b & 50% #1 {x} ~") == r"a\_b \& 50\% \#1 \{x\} \textasciitilde{}"
    assert tex("x4 256->1024") == r"x4 256-\textgreater{}1024"


# ---- the architecture diagram ---------------------------------------------------------------------------
def test_arch_diagram_from_the_real_networks(tmp_path):
    from PIL import Image

    from superres.training.models import Generator, UnetConfig, n_params
    from superres.writeup.arch_diagram import describe, draw
    desc = describe(None)
    assert desc["generator"]["params"] == n_params(Generator(UnetConfig()))
    assert [lvl["channels"] for lvl in desc["generator"]["encoder"]][-1] == desc["generator"]["middle_channels"]
    assert any(b["self_attention"] for b in desc["generator"]["decoder"])
    out = tmp_path / "arch.png"
    draw(desc, out)
    with Image.open(out) as im:
        assert im.width >= 1200, im.size
    files = arch_files(desc)
    assert _fmt_params(desc["generator"]["params"]) in files["arch_table.tex"]


def test_the_report_builds_from_stored_results_without_torch(tmp_path):
    """`python -m superres report` (without --measure) reads the networks' description and the degradation figure
    that `--measure` stored, imports neither torch nor fastai, and remakes the committed files from them."""
    shutil.copytree(REPO / "Report", tmp_path / "Report", ignore=shutil.ignore_patterns("build", "*.pdf"))
    code = ("import sys; from pathlib import Path; from superres.writeup import report; "
            f"report.generate(Path({str(tmp_path)!r}), log=lambda *a: None); "
            "print(sorted(m for m in ('torch', 'fastai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO / "Code")})
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
    for name in ("arch_table.tex", "arch_meta.tex", "model_meta.tex", "model_stages.tex", "figures.tex"):
        assert (tmp_path / "Report" / "generated" / name).read_text() == (GENERATED / name).read_text(), name
    assert (tmp_path / "arch_srgan.png").read_bytes() == (REPO / "arch_srgan.png").read_bytes()


def test_a_stale_networks_description_is_refused(tmp_path):
    """A description made for another model card stops the build with the command that remakes it."""
    from superres.writeup.report_model import NETWORKS_JSON, networks_description
    desc = json.loads((GENERATED / NETWORKS_JSON).read_text())
    (tmp_path / NETWORKS_JSON).write_text(json.dumps({**desc, "model_card_created": "2000-01-01"}))
    with pytest.raises(RuntimeError, match="report --measure"):
        networks_description(tmp_path / NETWORKS_JSON, load_json(REPO / "Code/superres/default_model/model_card.json"))


def test_committed_arch_png_is_wide_enough():
    from PIL import Image
    png = REPO / "arch_srgan.png"
    assert png.is_file(), "arch_srgan.png is missing: run `python -m superres report`"
    with Image.open(png) as im:
        assert im.width >= 1200


# ---- a full build, where LaTeX is installed -------------------------------------------------------------
@pytest.mark.slow
def test_documents_build_from_synthetic_results(tmp_path):
    """Generate everything from a synthetic evaluation.json into a copy of Report/ and Presentations/,
    and build the three PDFs."""
    require(shutil.which("latexmk") is not None, "needs latexmk (texlive-latex-recommended, -extra; Code/ci_setup.sh)")
    root = tmp_path / "repo"
    shutil.copytree(REPO / "Report", root / "Report", ignore=shutil.ignore_patterns("build", "generated", "*.pdf"))
    shutil.copytree(REPO / "Presentations", root / "Presentations", ignore=shutil.ignore_patterns("build", "*.pdf"))
    results = tmp_path / "results"
    results.mkdir()
    (results / "evaluation.json").write_text(json.dumps(synthetic_evaluation()))
    rp.generate(root, results / "evaluation.json", model_dir=tmp_path / "no_model", run_dir=tmp_path / "no_run",
                measure=True, log=lambda *a: None)
    assert (root / "arch_srgan.png").is_file()
    assert (root / "Report" / "generated" / "strength.pdf").is_file()
    for doc in rp.DOCS.values():
        pdf = rp.build_pdf(root / doc, log=lambda *a: None)
        assert pdf.stat().st_size > 10_000
