"""Pictures for the notebook: degradations, low-quality / output / target grids, strength blends and
training curves. Matplotlib only; every function returns its figure (the notebook displays it).
"""
from __future__ import annotations

import random
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from superres.training.data import Degradation, random_crop, to_tensor
from superres.training.models import Generator, blend_outputs, upscale


def to_image(t: torch.Tensor):
    """(3,H,W) tensor in [0,1] -> (H,W,3) numpy array for imshow."""
    return t.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def enhance_tensor(x: torch.Tensor, *networks: Generator) -> torch.Tensor:
    """Run the networks in turn on a batch of any size, clamping to [0,1] (one network for a plain x4 or x2)."""
    for net in networks:
        x = upscale(net.eval(), x.to(next(net.parameters()).device)).float().clamp(0, 1)
    return x


def _grid(columns: dict, n: int, size: float = 2.6):
    fig, axes = plt.subplots(n, len(columns), figsize=(size * len(columns), size * n), squeeze=False)
    for j, (title, images) in enumerate(columns.items()):
        for i in range(n):
            ax = axes[i, j]
            ax.imshow(to_image(images[i]), interpolation="nearest")  # low-res inputs shown as blocky pixels
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(title)
    fig.tight_layout()
    return fig


def show_degradations(photo, degradation: Degradation, n: int = 5, hr_size: int = 256, seed: int = 0):
    """One crop of `photo` (PIL) and `n` random draws of `degradation` applied to it (shown at the same size)."""
    rng = random.Random(seed)
    hr = random_crop(photo, hr_size, rng, min_zoom=1.0)
    columns = {"clean": [to_tensor(hr)]}
    for i in range(n):
        columns[f"degraded #{i + 1}"] = [to_tensor(degradation(hr, rng))]
    return _grid(columns, 1, size=2.4)


def show_results(batch, *networks: Generator, n: int = 4, bicubic: bool = False, titles=None):
    """Rows of low quality | (bicubic) | output | target for the first `n` items of an (lr, hr) batch.

    With no networks it shows just the pairs (a look at the training data)."""
    lr, hr = batch
    n = min(n, len(lr))
    lr, hr = lr[:n].float().cpu(), hr[:n].float().cpu()
    columns = {"low quality": lr}
    if bicubic:
        scale = hr.shape[-1] // lr.shape[-1]
        columns["bicubic"] = F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)
    if networks:
        columns[titles or "output"] = enhance_tensor(lr, *networks).cpu()
    columns["target"] = hr
    return _grid(columns, n)


def show_strengths(batch, faithful: Generator, gan: Generator, strengths=(0.0, 0.5, 1.0), n: int = 2):
    """Rows of low quality | output at each strength | target."""
    lr, hr = batch
    n = min(n, len(lr))
    lr, hr = lr[:n].float().cpu(), hr[:n].float().cpu()
    columns = {"low quality": lr}
    # blended before clamping, as the Enhancer does (upscale runs without gradients)
    faithful_out, gan_out = (upscale(net.eval(), lr.to(next(net.parameters()).device)).float().cpu()
                             for net in (faithful, gan))
    for s in strengths:
        columns[f"strength {s:g}"] = blend_outputs(faithful_out, gan_out, s).clamp(0, 1)
    columns["target"] = hr
    return _grid(columns, n)


def plot_history(run_dir, stages=("generator", "critic", "gan")):
    """Training and validation loss per epoch of each stage, from the run's CSV logs."""
    import pandas as pd
    logs = {s: Path(run_dir) / "logs" / f"{s}.csv" for s in stages}
    logs = {s: pd.read_csv(p) for s, p in logs.items() if p.exists()}
    fig, axes = plt.subplots(1, max(1, len(logs)), figsize=(4 * max(1, len(logs)), 3), squeeze=False)
    for ax, (stage, df) in zip(axes[0], logs.items(), strict=False):   # one axis even without logs
        # fastai's GAN learner logs the critic's loss as train_loss; its gen_loss / crit_loss columns say more
        cols = ("gen_loss", "crit_loss") if "gen_loss" in df else ("train_loss", "valid_loss")
        for col in cols:
            if col in df:
                ax.plot(df["epoch"] + 1, df[col], "o-", label=col)
        ax.set_title(stage), ax.set_xlabel("epoch"), ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return fig


def score_table(dl, methods: dict, scale: int, border: int | None = None):
    """PSNR / SSIM (Y channel, `border` pixels shaved, default `scale`) over a DataLoader of (lr, hr) pairs,
    for bicubic and for each `methods` entry (name -> tuple of networks run in turn). Returns a DataFrame."""
    import pandas as pd

    from superres.training.metrics import psnr_y, ssim_y
    border = scale if border is None else border
    sums, count = {}, 0
    for lr, hr in dl:
        lr, hr = lr.float().cpu(), hr.float().cpu()
        outputs = {"bicubic": F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)}
        outputs.update({name: enhance_tensor(lr, *nets).cpu() for name, nets in methods.items()})
        for name, out in outputs.items():
            s = sums.setdefault(name, [0.0, 0.0])
            s[0] += float(psnr_y(out, hr, border)) * len(lr)
            s[1] += float(ssim_y(out, hr, border)) * len(lr)
        count += len(lr)
    return pd.DataFrame({"PSNR_Y (dB)": {k: v[0] / count for k, v in sums.items()},
                         "SSIM_Y": {k: v[1] / count for k, v in sums.items()}}).round(4)
