"""The write-up's model parts: the model card and the training record -> model_*.tex, the networks'
description (superres.writeup.arch_diagram, stored in networks.json by `report --measure`) -> arch_*.tex."""
from __future__ import annotations

from pathlib import Path

from superres.evaluation.results import load_json
from superres.runtime.model_folder import STAGES
from superres.writeup.latex import NOT_MEASURED, define, header, num, tex

MAIN_SCALE = "x4"   # the run the report describes in detail (the x2 run is summarised beside it)
NETWORKS_JSON = "networks.json"         # in Report/generated/: the networks' description (writeup.report_torch)
DEGRADATIONS_PNG = "degradations.png"   # in Report/generated/: draws of the training degradation (report_torch)
LOSS_NAMES = {"weightfree": "the weight-free loss (L1 + SSIM + gradient L1)",
              "feature": "the VGG16\\_bn feature loss", "mse": "pixel MSE"}


def recorded_degradations(card: dict | None, record: dict | None) -> dict[str, dict]:
    """{"x4": fields, "x2": fields} as the model card (or else the training record) recorded them.
    Only recorded fields: nothing is filled in from today's code."""
    out = {}
    if card and not card.get("untrained"):
        for data in (card.get("data") or {}).values():
            out.update((data or {}).get("degradation") or {})
    if not out and record:
        out = dict(record.get("degradation") or {})
    return {k: v for k, v in out.items() if isinstance(v, dict)}


def degradation_source(card: dict | None, record: dict | None) -> str:
    """Where the degradation figure's parameters come from (superres.writeup.report_torch draws it by the same rule)."""
    if recorded_degradations(card, record).get(MAIN_SCALE):
        return f"as recorded for the {MAIN_SCALE} model"
    return "as configured in superres.training.train (no recorded degradation yet)"


def networks_description(path: Path, card: dict | None) -> dict:
    """The description `report --measure` stored, checked to be of this model card's networks."""
    desc = load_json(path)
    if desc is None or desc.get("model_card_created") != (card or {}).get("created"):
        made = "is missing" if desc is None else "describes the networks of another model card"
        raise RuntimeError(f"{path} {made}: run `python -m superres report --measure` (it builds the networks "
                           "with torch)")
    return desc


def card_scale(card: dict, key: str, scale: str = MAIN_SCALE) -> dict:
    """One scale's entry of a per-scale section of the model card (losses, stages, training, data)."""
    return (card.get(key) or {}).get(scale) or {}


def model_files(card: dict | None, record: dict | None, counts: dict | None) -> dict[str, str]:
    src = "the model card and the training record"
    lines = [header(src), "\\makeatletter"]
    files = {}
    if card and not card.get("untrained"):
        lines.append("\\modelavailabletrue")
        lines.append(f"\\renewcommand{{\\ModelCreated}}{{{tex(card.get('created', '?'))}}}")
        loss = card_scale(card, "losses").get("generator")
        lines.append(f"\\renewcommand{{\\ModelLoss}}{{{LOSS_NAMES.get(loss, tex(loss))}}}")
        lines.append(f"\\renewcommand{{\\ModelDefaultStrength}}{{{card.get('default_strength')}}}")
        tr = card_scale(card, "training")
        device = tex(tr.get('device', '?')) + (", bf16" if tr.get("bf16") else "")
        lines.append(f"\\renewcommand{{\\ModelDevice}}{{{device}}}")
        rows, total = [], 0.0
        for scale, stages in sorted((card.get("stages") or {}).items(), key=lambda kv: kv[0] != MAIN_SCALE):
            total += sum(s.get("wall_s", 0) for s in stages.values())
            for name in STAGES:
                rows.append(stage_row(scale, name, stages.get(name), lines if scale == MAIN_SCALE else []))
        for scale, jpeg in sorted((card.get("jpeg_networks") or {}).items()):   # stage 1 only, fine-tuned
            total += jpeg["stages"]["generator"].get("wall_s", 0)
            rows.append(stage_row(f"{scale} JPEG", "generator", jpeg["stages"]["generator"], []))
        for scale, real in sorted((card.get("real_faithful_networks") or {}).items()):   # stage 1, fine-tuned
            total += real["stages"]["generator"].get("wall_s", 0)
            rows.append(stage_row(f"{scale} real faithful", "generator", real["stages"]["generator"], []))
        for scale, real in sorted((card.get("real_networks") or {}).items()):   # real-world chain, GAN side
            for name in (n for n in STAGES if n in real["stages"]):
                total += (real["stages"].get(name) or {}).get("wall_s", 0)
                rows.append(stage_row(f"{scale} real", name, real["stages"].get(name), []))
        lines.append(define("stage", "total@hours", f"{total / 3600:.1f}"))
        lines.append(define("stage", "total@minutes", f"{total / 60:.0f}"))
        files["model_stages.tex"] = "\n".join([
            header(src), "\\begin{tabular}{llrrrrrr}", "\\toprule",
            "Scale & stage & epochs & steps & s/step & wall (min) & PSNR(Y) & SSIM(Y) \\\\", "\\midrule", *rows,
            "\\bottomrule", "\\end{tabular}", ""])
    else:
        if card and card.get("untrained"):
            lines.append("\\renewcommand{\\ModelCreated}{random weights (untrained): no results}")
    for scale, d in recorded_degradations(card, record).items():
        for k, v in d.items():
            val = (", ".join(str(x) for x in v) if isinstance(v, (list, tuple))
                   else f"{v:g}" if isinstance(v, float) else str(v))
            lines.append(define("deg" if scale == MAIN_SCALE else "deg" + scale, k, tex(val)))
    cfg = (record or {}).get("config") or {}    # without a record, \trainq says "not yet measured"
    if record:
        lines.append("\\renewcommand{\\TrainConfigSource}{the training record}")
    for k, v in cfg.items():
        if isinstance(v, (int, float, str)) and not isinstance(v, bool):
            lines.append(define("train", k, tex(f"{v:g}" if isinstance(v, float) else v)))
        elif isinstance(v, (list, tuple)):
            lines.append(define("train", k, tex(", ".join(f"{x:g}" for x in v))))
    for k, v in (counts or {}).items():
        lines.append(define("count", k, str(v)))
    lines += ["\\makeatother", ""]
    files["model_meta.tex"] = "\n".join(lines)
    return files


def stage_row(scale: str, name: str, st: dict | None, lines: list) -> str:
    """One row of the stages table; the main scale's scores also become \\stageq macros (in `lines`)."""
    if not st:
        return f"{scale} & {name} & \\multicolumn{{6}}{{l}}{{{NOT_MEASURED}}} \\\\"
    v = st.get("valid", {})
    acc = v.get("accuracy_thresh_expand")
    quality = (f"{num(v.get('psnr_y'), 2)} & {num(v.get('ssim_y'), 4)}" if "psnr_y" in v else
               f"\\multicolumn{{2}}{{c}}{{accuracy {num(acc, 3)}}}" if acc is not None else "-- & --")
    for k, d in (("psnr_y", 2), ("ssim_y", 4), ("valid_loss", 4)):
        if v.get(k) is not None:
            lines.append(define("stage", f"{name}@{k}", f"{v[k]:.{d}f}"))
    if st.get("wall_s") is not None:
        lines.append(define("stage", f"{name}@minutes", f"{st['wall_s'] / 60:.1f}"))
    return (f"{scale} & {name} & {st.get('epochs', '?')} & {st.get('steps', '?')} & {num(st.get('s_per_step'), 3)} & "
            f"{num(st.get('wall_s', 0) / 60 if st.get('wall_s') is not None else None, 1)} & {quality} \\\\")


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}\\,M" if n >= 1e6 else f"{n / 1e3:.1f}\\,k"


def arch_files(desc: dict) -> dict[str, str]:
    gen, gen2, critic = desc["generator"], desc["generator_x2"], desc["critic"]
    cfg = gen["config"]
    src = "the networks built by superres.training.models (" + desc["source"] + ")"
    rows = []
    for lvl in gen["encoder"]:
        rows.append(f"encoder & {tex(' + '.join(lvl['parts']))} & {lvl['channels']} & {lvl['res']} & "
                    f"{_fmt_params(lvl['params'])} \\\\")
    rows.append(f"middle & 2 conv $3{{\\times}}3$ & {gen['middle_channels']} & {gen['encoder'][-1]['res']} & "
                f"{_fmt_params(gen['middle_params'])} \\\\")
    for b in gen["decoder"]:
        sa = " + self-attention" if b["self_attention"] else ""
        rows.append(f"decoder & UnetBlock (PixelShuffle ICNR{sa}) & {b['channels']} & {b['res']} & "
                    f"{_fmt_params(b['params'])} \\\\")
    fin = gen["final"]
    rows.append(f"decoder & {'PixelShuffle ICNR, ' if fin['pixel_shuffle'] else ''}$1{{\\times}}1$ conv & "
                f"{fin['channels']} & {fin['res']} & {_fmt_params(fin['params'])} \\\\")
    tr, hd = gen["trunk"], gen["head"]
    rows.append(f"stem & conv $3{{\\times}}3$ of the input & {tr['channels']} & H & "
                f"{_fmt_params(gen['stem_params'])} \\\\")
    rows.append(f"trunk & {tr['blocks']} ResBlocks & {tr['channels']} & H & {_fmt_params(tr['params'])} \\\\")
    rows.append(f"head & conv $3{{\\times}}3$ + PixelShuffle $\\times{hd['scale']}$ (ICNR) & 3 & {hd['scale']}H & "
                f"{_fmt_params(hd['params'])} \\\\")
    table = [header(src), "\\begin{tabular}{lllrr}", "\\toprule",
             "Part & Layers & channels & resolution & parameters \\\\", "\\midrule", *rows, "\\midrule",
             f"\\multicolumn{{4}}{{l}}{{$\\times{cfg['scale']}$ generator total}} & {_fmt_params(gen['params'])} \\\\",
             f"\\multicolumn{{4}}{{l}}{{$\\times2$ generator total (same design)}} & "
             f"{_fmt_params(gen2['params'])} \\\\",
             f"\\multicolumn{{4}}{{l}}{{critic total}} & {_fmt_params(critic['params'])} \\\\",
             "\\bottomrule", "\\end{tabular}", ""]
    strided = [c for c in critic["convs"] if c["stride"] == 2]
    macros = [header(src),
              f"\\renewcommand{{\\ArchEncoder}}{{{tex(cfg['arch'])}}}",
              f"\\renewcommand{{\\ArchWiden}}{{{cfg['widen']:g}}}",
              f"\\renewcommand{{\\ArchNf}}{{{cfg['nf']}}}",
              f"\\renewcommand{{\\ArchTrunkBlocks}}{{{cfg['trunk_blocks']}}}",
              f"\\renewcommand{{\\ArchGenParams}}{{{_fmt_params(gen['params'])}}}",
              f"\\renewcommand{{\\ArchXtwoParams}}{{{_fmt_params(gen2['params'])}}}",
              f"\\renewcommand{{\\ArchCriticParams}}{{{_fmt_params(critic['params'])}}}",
              f"\\renewcommand{{\\ArchCriticNf}}{{{critic['nf']}}}",
              f"\\renewcommand{{\\ArchCriticStrided}}{{{len(strided)}}}",
              f"\\renewcommand{{\\ArchEncoderChannels}}{{{', '.join(str(lvl['channels']) for lvl in gen['encoder'])}}}",
              f"\\renewcommand{{\\ArchDecoderChannels}}{{{', '.join(str(b['channels']) for b in gen['decoder'])}}}",
              f"\\renewcommand{{\\ArchSource}}{{{tex(desc['source'])}}}",
              f"\\renewcommand{{\\GanWeights}}{{{' and '.join(f'{w:g}' for w in desc['gan_weights'])}}}",
              ""]
    return {"arch_table.tex": "\n".join(table), "arch_meta.tex": "\n".join(macros)}


