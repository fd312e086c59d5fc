"""The write-up's inputs that only the training code can make (it imports torch and fastai), kept in
Report/generated/ so that `python -m superres report` reads them and imports neither:

    networks.json      the networks' description: superres.writeup.arch_diagram builds them as the model card (and the
                       training record) configure them, a few seconds on the CPU
    degradations.png   five random draws of the main scale's training degradation on matplotlib's Grace Hopper

`python -m superres report --measure` remakes both (needed after `export` writes a new model card); otherwise the
report uses the committed ones and checks that they were made for the model card it describes.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from superres.writeup.report_model import DEGRADATIONS_PNG, MAIN_SCALE, NETWORKS_JSON, recorded_degradations


def measure(card: dict | None, record: dict | None, out: Path, plt) -> None:
    """Write out/networks.json and out/degradations.png; `plt` is pyplot in the report's figure style."""
    from superres.writeup.arch_diagram import describe
    desc = describe(card if card and not card.get("untrained") else None,
                    (record or {}).get("config"), loss=(record or {}).get("loss"))
    desc["model_card_created"] = (card or {}).get("created")   # what report checks the description against
    (out / NETWORKS_JSON).write_text(json.dumps(desc, indent=1) + "\n")
    degradation_figure(card, record, out / DEGRADATIONS_PNG, plt)


def degradation_figure(card: dict | None, record: dict | None, path: Path, plt) -> None:
    """Random draws of the main scale's training degradation (as recorded, else as superres.training.train configures
    it;
    report_model.degradation_source says which) on matplotlib's Grace Hopper photo."""
    import matplotlib.cbook as cbook
    from PIL import Image

    from superres.training.data import Degradation
    from superres.writeup.plots import show_degradations
    rec = recorded_degradations(card, record).get(MAIN_SCALE)
    names = {f.name for f in dataclasses.fields(Degradation)}
    if rec:
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in rec.items() if k in names}
        if "clean_prob" in names and "clean_prob" not in rec:
            fields["clean_prob"] = 0.0          # recorded before clean inputs existed: there were none
        deg = Degradation(**fields)
    else:
        from superres.training.train import TrainConfig, degradation
        deg = degradation(TrainConfig(data=""))
    photo = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    fig = show_degradations(photo, deg, n=5, hr_size=192, seed=1)
    fig.savefig(path, dpi=110)
    plt.close(fig)
