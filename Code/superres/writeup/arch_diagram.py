"""The architecture diagram (arch_srgan.png), drawn from the real networks.

`describe()` builds the x4 and x2 generators and the critic with `superres.training.models` on the CPU (random
weights, a few seconds), runs one low-resolution batch through them with forward hooks and records what
each part really is: encoder levels (channels, resolution, blocks), decoder blocks (channels, which one
has self-attention), the trunk, the PixelShuffle head, the critic's layers and every parameter count. `draw()` turns
that description into a matplotlib figure (no torch), so the picture changes when the models do.

`python -m superres report --measure` stores the description in Report/generated/networks.json
(superres.writeup.report_torch); `python -m superres report` draws the figure from it.
"""
from __future__ import annotations

from dataclasses import fields

PROBE = 64          # side of the low-resolution probe input (the training LR crop is hr_size/scale = 64)


# ---- what the networks are -------------------------------------------------------------------------
def _unet_config(d: dict | None):
    from superres.training.models import UnetConfig
    if not d:
        return UnetConfig()
    names = {f.name for f in fields(UnetConfig)}
    return UnetConfig(**{k: v for k, v in d.items() if k in names})


def _count(module, names) -> int:
    return sum(1 for m in module.modules() if type(m).__name__ in names)


def _fraction(probe: int, side: int) -> str:
    if side == probe:
        return "H"
    if side > probe:
        return f"{side // probe}H"
    return f"H/{probe // side}"


def describe_generator(cfg) -> dict:
    """Levels, blocks and parameter counts of one `Generator(cfg)`, from a probe forward pass."""
    import torch

    from superres.training.models import Generator, n_params
    g = Generator(cfg).eval()
    enc = g.unet.layers[0]
    shapes = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, key=i: shapes.__setitem__(key, tuple(out.shape)))
             for i, m in enumerate(enc)]
    hooks += [m.register_forward_hook(lambda mod, inp, out, key=("u", i): shapes.__setitem__(key, tuple(out.shape)))
              for i, m in enumerate(g.unet.layers)]
    with torch.no_grad():
        out = g(torch.rand(1, 3, PROBE, PROBE))
    for h in hooks:
        h.remove()

    # encoder levels: consecutive children with the same output resolution
    levels = []
    for i, child in enumerate(enc):
        c, side = shapes[i][1], shapes[i][2]
        kind = type(child).__name__
        if levels and levels[-1]["side"] == side:
            lvl = levels[-1]
        else:
            lvl = {"side": side, "res": _fraction(PROBE, side), "parts": [], "params": 0}
            levels.append(lvl)
        n_res = _count(child, ("ResBlock", "BasicBlock", "Bottleneck"))
        if n_res:
            lvl["parts"].append(f"{n_res}x ResBlock")
        elif kind == "ConvLayer" or kind == "Conv2d":
            if lvl["parts"] and lvl["parts"][-1].endswith("conv"):
                n = int(lvl["parts"][-1].split("x")[0]) + 1 if "x" in lvl["parts"][-1] else 2
                lvl["parts"][-1] = f"{n}x conv"
            else:
                lvl["parts"].append("conv")
        elif "Pool" in kind:
            lvl["parts"].append("max-pool")
        lvl["channels"] = c
        lvl["params"] += n_params(child)

    layers = list(g.unet.layers)
    names = [type(m).__name__ for m in layers]
    blocks = []
    for i, (name, m) in enumerate(zip(names, layers, strict=True)):
        if name == "UnetBlock":
            shp = shapes[("u", i)]
            blocks.append({"channels": shp[1], "side": shp[2], "res": _fraction(PROBE, shp[2]),
                           "self_attention": _count(m, ("SelfAttention",)) > 0, "params": n_params(m)})
    first_block = names.index("UnetBlock")
    middle = layers[1:first_block]
    last_block = max(i for i, n in enumerate(names) if n == "UnetBlock")
    final = layers[last_block + 1:]
    final_shape = shapes[("u", len(layers) - 1)]
    return {
        "config": cfg.to_dict(),
        "encoder_arch": cfg.arch,
        "encoder": levels,
        "encoder_params": n_params(enc),
        "middle_params": sum(n_params(m) for m in middle),
        "middle_channels": shapes[("u", first_block - 1)][1],
        "decoder": blocks,
        "final": {"parts": [type(m).__name__ for m in final if n_params(m) or type(m).__name__ == "ResizeToOrig"],
                  "channels": final_shape[1], "res": _fraction(PROBE, final_shape[2]),
                  "params": sum(n_params(m) for m in final),
                  "pixel_shuffle": any(type(m).__name__ == "PixelShuffle_ICNR" for m in final)},
        "stem_params": n_params(g.stem),
        "trunk": {"blocks": cfg.trunk_blocks, "channels": cfg.nf, "params": n_params(g.trunk)},
        "head": {"channels_in": cfg.nf, "scale": cfg.scale, "params": n_params(g.head)},
        "output": list(out.shape[1:]),
        "params": n_params(g),
    }


def describe_critic(nf: int) -> dict:
    import torch
    from torch import nn

    from superres.training.models import make_critic, n_params
    c = make_critic(nf=nf).eval()
    convs = []
    for m in c.modules():
        if isinstance(m, nn.Conv2d):
            convs.append({"in": m.in_channels, "out": m.out_channels, "k": m.kernel_size[0], "stride": m.stride[0]})
    with torch.no_grad():
        out = c(torch.rand(1, 3, 2 * PROBE, 2 * PROBE))
    spectral = any(hasattr(m, "weight_orig") for m in c.modules())
    return {"nf": nf, "high_pass": _count(c, ("HighPass",)) > 0, "convs": convs,
            "self_attention": _count(c, ("SelfAttention",)) > 0,
            "res_blocks": _count(c, ("SequentialEx",)), "spectral_norm": spectral,
            "logits_for_probe": list(out.shape[1:]), "probe": 2 * PROBE, "params": n_params(c)}


def describe(model_card: dict | None = None, train_config: dict | None = None, loss: str | None = None) -> dict:
    """Describe the networks as the model card (or, without one, the code's defaults) configures them:
    `generator` is the x4 one (drawn in full), `generator_x2` the x2 one."""
    from dataclasses import replace

    from superres.training.train import TrainConfig
    arch = (model_card or {}).get("architecture", {})
    tc = train_config or {}
    gen_cfg = _unet_config(arch.get("x4") or tc.get("generator"))
    x2_cfg = _unet_config(arch["x2"]) if "x2" in arch else replace(gen_cfg, scale=2)
    critic_nf = int(tc.get("critic_nf", TrainConfig(data="").critic_nf))
    losses = (model_card or {}).get("losses") or {}
    desc = {"source": "model card" if arch else ("training record" if tc else "code defaults"),
            "generator": describe_generator(gen_cfg), "generator_x2": describe_generator(x2_cfg),
            "critic": describe_critic(critic_nf),
            "loss": (losses.get("x4") or {}).get("generator") or loss,
            # what trained the shipped x4 GAN network (the card's record of its stage), else the run's or the defaults
            "gan_weights": ((model_card or {}).get("stages", {}).get("x4", {}).get("gan", {}).get("weights_gen")
                            or tc.get("gan_weights", list(TrainConfig(data="").gan_weights))),
            "polish_lattice": tc.get("polish_lattice", TrainConfig(data="").polish_lattice),
            "default_strength": (model_card or {}).get("default_strength")}
    desc["loss_text"] = loss_text(desc["loss"])        # in words, so that drawing needs no torch
    card_params = (model_card or {}).get("parameters", {})
    for key, name in (("x4", "generator"), ("x2", "generator_x2")):
        if key in card_params and card_params[key] != desc[name]["params"]:
            raise RuntimeError(f"{key}: the model card says {card_params[key]} parameters, the rebuilt network "
                               f"has {desc[name]['params']}: the card and superres.training.models disagree")
    return desc


# ---- drawing ---------------------------------------------------------------------------------------
COLORS = {"enc": "#dbe9f6", "dec": "#fde3c8", "mid": "#e4dcf1", "head": "#d5efd5", "io": "#f2f2f2",
          "critic": "#f8d5d5", "trunk": "#fff3bf", "loss": "#c0392b", "edge": "#3b3b3b"}


def loss_text(name: str | None) -> str:
    """The training loss in words, with the weights `superres.training.losses` really uses."""
    from superres.training.losses import FeatureLoss, WeightFreeLoss
    if name == "weightfree":
        w = WeightFreeLoss()
        return f"L1 + {w.w_ssim:g} (1 - SSIM) + {w.w_grad:g} L1 of image gradients (weight-free loss)"
    if name == "feature":
        import inspect
        wgts = inspect.signature(FeatureLoss.__init__).parameters["layer_wgts"].default
        return "L1 + VGG16_bn feature + Gram losses, layer weights " + ", ".join(f"{x:g}" for x in wgts)
    if name == "mse":
        return "pixel MSE"
    return name or "pixel + feature loss (see the model card)"


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k"


def draw(desc: dict, path=None, dpi: int = 110):
    """The figure (20 x 11.5 in; 2200 px wide at the default dpi); saved to `path` if given."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig = plt.figure(figsize=(20, 11.5))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, 200)
    ax.set_ylim(0, 115)
    ax.axis("off")

    def box(x, y, w, h, text, color, fs=11, weight="normal", ec=None, lw=1.2, ls="-"):
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.25,rounding_size=1.2", fc=color,
                                    ec=ec or COLORS["edge"], lw=lw, ls=ls))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fs, weight=weight, linespacing=1.25)

    def arrow(p, q, color=None, lw=1.6, ls="-", rad=0.0, style="-|>"):
        ax.add_patch(FancyArrowPatch(p, q, arrowstyle=style, mutation_scale=14, color=color or COLORS["edge"],
                                     lw=lw, ls=ls, connectionstyle=f"arc3,rad={rad}", shrinkA=2, shrinkB=2))

    def label(x, y, text, fs=11, color="black", ha="center", weight="normal", style="normal"):
        ax.text(x, y, text, ha=ha, va="center", fontsize=fs, color=color, weight=weight, style=style)

    gen, gen2, critic = desc["generator"], desc["generator_x2"], desc["critic"]
    cfg = gen["config"]
    widen = f", widen {cfg['widen']:g}" if cfg["arch"].startswith("xresnet") else ""
    ax.text(100, 111.5, f"Generator G (x{cfg['scale']}): fastai DynamicUnet on a {cfg['arch']}{widen} encoder + "
            f"ResBlock trunk, all at the low-resolution input's size   ({_fmt_params(gen['params'])} parameters)",
            ha="center", va="center", fontsize=16, weight="bold")
    opts = [k for k in ("blur", "self_attention") if cfg.get(k)] + ["weight norm"]
    ax.text(100, 107.5, "options: " + ", ".join(o.replace("_", "-") for o in opts)
            + f", last_cross={cfg['last_cross']}; resolutions for an H x W input; probe: {PROBE} x {PROBE}",
            ha="center", va="center", fontsize=11.5, style="italic")

    # ---- the U: encoder down the left, decoder up the right --------------------------------------
    enc, dec = gen["encoder"], gen["decoder"]
    n = len(enc)
    top, step, bh = 96.0, 9.6, 7.2
    ex, ew = 16.0, 36.0
    dx, dw = 104.0, 38.0
    box(1.5, top, 11, bh, "LR input x\n3 x H x W", COLORS["io"], fs=11)
    enc_pos = []
    for i, lvl in enumerate(enc):
        y = top - i * step
        parts = " + ".join(lvl["parts"])
        box(ex + i * 3.0, y, ew, bh, f"{parts}\n{lvl['channels']} ch @ {lvl['res']}   ({_fmt_params(lvl['params'])})",
            COLORS["enc"], fs=11)
        enc_pos.append((ex + i * 3.0, y))
        if i:
            arrow((ex + (i - 1) * 3.0 + 8, y + step), (ex + i * 3.0 + 8, y + bh))
    arrow((12.5, top + bh / 2), (ex, top + bh / 2))
    label(ex + 2, top + bh + 3.0, f"encoder ({_fmt_params(gen['encoder_params'])})", fs=12.5, weight="bold",
          ha="left")

    # middle
    my = top - n * step
    mx = 58.0
    box(mx, my, 44, bh, f"middle: 2x conv 3x3 + BatchNorm/ReLU\n{gen['middle_channels']} ch @ {enc[-1]['res']}   "
        f"({_fmt_params(gen['middle_params'])})", COLORS["mid"], fs=11)
    last = enc_pos[-1]
    arrow((last[0] + ew / 2, last[1]), (mx + 6, my + bh), rad=0.2)

    # decoder blocks, bottom-up; each takes a skip from the encoder level of its resolution
    dec_pos = []
    nb = len(dec)
    for j, blk in enumerate(dec):
        y = my + (j + 1) * step
        x = dx - j * 0 + (nb - 1 - j) * 3.0
        sa = "  + self-attention" if blk["self_attention"] else ""
        box(x, y, dw, bh, f"UnetBlock: PixelShuffle x2 (ICNR){sa}\n+ skip, 2x conv 3x3 -> {blk['channels']} ch @ "
            f"{blk['res']}   ({_fmt_params(blk['params'])})", COLORS["dec"], fs=10.5,
            ec="#b03a2e" if blk["self_attention"] else None, lw=2.2 if blk["self_attention"] else 1.2)
        dec_pos.append((x, y))
        # skip from the encoder level whose resolution is the one this block up-samples *from* x2
        src = next((k for k in range(n - 1, -1, -1) if enc[k]["side"] == blk["side"]), None)
        if src is not None:
            sx, sy = enc_pos[src]
            arrow((sx + ew, sy + bh / 2), (x, y + bh / 2), color="#7f8c8d", ls="--", lw=1.3)
    arrow((mx + 38, my + bh), (dec_pos[0][0] + 10, dec_pos[0][1]), rad=-0.2)
    for j in range(1, nb):
        arrow((dec_pos[j - 1][0] + 10, dec_pos[j - 1][1] + bh), (dec_pos[j][0] + 10, dec_pos[j][1]))
    label(dx + 6, dec_pos[-1][1] + bh + 3.0, f"decoder ({_fmt_params(sum(b['params'] for b in dec))})",
          fs=12.5, weight="bold", ha="left")
    label(ex, my + 3.5, "dashed: skip connections (concatenated)", fs=10.5, color="#566573", style="italic", ha="left")

    # final up-sampling of DynamicUnet to the input size, then the stem + trunk at that size, then the head
    fx, fy = 152.0, dec_pos[-1][1] + step
    fin = gen["final"]
    fin_text = ("PixelShuffle x2 (ICNR) to input size\n+ 1x1 conv -> " if fin["pixel_shuffle"]
                else "resize + 1x1 conv -> ")
    box(fx, fy, 44, bh, fin_text + f"{fin['channels']} ch @ {fin['res']}   ({_fmt_params(fin['params'])})",
        COLORS["dec"], fs=10.5)
    arrow((dec_pos[-1][0] + dw, dec_pos[-1][1] + bh / 2), (fx, fy + bh / 2), rad=0.15)
    tr, hd = gen["trunk"], gen["head"]
    ty = fy - step
    box(fx, ty, 44, bh, f"+ stem conv 3x3 of x ({_fmt_params(gen['stem_params'])}), then trunk:\n"
        f"{tr['blocks']}x ResBlock, {tr['channels']} ch @ H   ({_fmt_params(tr['params'])})", COLORS["trunk"], fs=10.5)
    arrow((fx + 22, fy), (fx + 22, ty + bh))
    hy = ty - step - 2.0
    box(fx, hy, 44, bh + 2.0, f"head: conv 3x3 {hd['channels_in']} -> 3 x {hd['scale']}^2 ch @ H\n"
        f"+ PixelShuffle x{hd['scale']} (ICNR init)  ({_fmt_params(hd['params'])})\nthe only step at the output size",
        COLORS["head"], fs=10.5, weight="bold")
    arrow((fx + 22, ty), (fx + 22, hy + bh + 2.0))
    # bicubic residual, then the output
    px, py = fx + 14, hy - 6.5
    ax.add_patch(plt.Circle((px, py), 2.2, fc="white", ec=COLORS["edge"], lw=1.5))
    label(px, py, "+", fs=16, weight="bold")
    arrow((px, hy), (px, py + 2.2))
    box(fx + 24, py - 3.6, 20, 7.2, f"bicubic x{hd['scale']} of x\n(global residual)", COLORS["io"], fs=10.5)
    arrow((fx + 24, py), (px + 2.2, py))
    box(fx + 4, py - 13.5, 20, 7.2, rf"$\hat y_{{\times {hd['scale']}}}$" + f"\n3 x {hd['scale']}H x {hd['scale']}W",
        COLORS["io"], fs=11.5)
    arrow((px, py - 2.2), (px, py - 6.3))

    # ---- bottom band: one generator per scale, the critic and the losses --------------------------
    ax.plot([2, 198], [47.5, 47.5], color="#bbbbbb", lw=1)
    label(100, 44.5, "Training and inference: one generator per scale, the critic, and where each loss applies",
          fs=15, weight="bold")
    cy = 30.0
    box(2, cy, 14, 8, "LR input x\n3 x H x W", COLORS["io"], fs=11)
    s = desc.get("default_strength")
    box(22, cy - 1, 40, 10, f"G: x{cfg['scale']} above, or x2 (same design, {_fmt_params(gen2['params'])})\n"
        "outputs blended: "
        r"$\hat y(s) = (1-s)\,G_{faithful}(x) + s\,G_{GAN}(x)$" + "\n"
        + (f"default s = {s:g}" if s is not None else "s in [0, 1]"), COLORS["head"], fs=11)
    arrow((16, cy + 4), (22, cy + 4))
    box(70, cy, 26, 8, r"$\hat y_{\times 4}$: 3 x 4H x 4W" + "\n" + r"$\hat y_{\times 2}$: 3 x 2H x 2W", COLORS["io"],
        fs=12)
    arrow((62, cy + 4), (70, cy + 4))
    label(128, cy + 4, "one network run per tile at s = 0 or 1, two in between\n"
          "(ONNX Runtime); no network at the output size", fs=12, style="italic")

    # critic
    cx, cyy = 58.0, 4.0
    convs = critic["convs"]
    strided = [c for c in convs if c["stride"] == 2]
    chans = ", ".join(f"{c['in']}->{c['out']}" for c in strided)
    extras = ((", self-attention" if critic["self_attention"] else "")
              + (", spectral norm" if critic["spectral_norm"] else ""))
    box(cx, cyy, 54, 14, f"Critic D: fastai gan_critic (nf = {critic['nf']}, {_fmt_params(critic['params'])})"
        + (" on x - blur(x)" if critic.get("high_pass") else "") + "\n"
        f"{len(strided)} stride-2 4x4 convs ({chans} ch),\n{critic['res_blocks']} residual block{extras},\n"
        f"then a 4x4 conv -> patch logits (real / generated)", COLORS["critic"], fs=10.5)
    arrow((83, cy), (78, cyy + 14), color=COLORS["loss"])
    box(2, 6.5, 44, 13, "real HR target y (degradation pipeline:\nblur, resize kernel, noise, JPEG;\n"
        "same crop as x)", COLORS["io"], fs=10.5)
    arrow((46, 13), (cx, 11), color=COLORS["loss"])

    # losses
    gw = desc["gan_weights"]
    lx = 128.0
    lines = [("1  generator", r"$L_{pix}(\hat y, y)$ (EMA of weights)  ->  $\theta_{faithful}$"),
             ("2  critic", r"BCE: $D(\hat y)$ -> generated, $D(y)$ -> real"),
             ("3  GAN", f"{gw[0]:g} x adversarial + {gw[1]:g} x " + r"$L_{pix}$  ->  $\theta_{GAN}$"),
             ("4  polish", r"$|\hat y - \hat y_{3}|_1$ + " + f"{desc['polish_lattice']:g}"
              + r" x lattice  ->  $\theta_{GAN}$"),
             ("", "each scale trains its own run of the four stages")]
    label(lx - 1, 22.0, "training stages and losses", fs=12.5, weight="bold", color=COLORS["loss"], ha="left")
    for k, (stage, text) in enumerate(lines):
        yy = 17.8 - k * 3.3
        label(lx - 1, yy, stage, fs=11, ha="left", weight="bold", color=COLORS["loss"])
        label(lx + 17, yy, text, fs=11, ha="left")
    label(lx - 1, 17.8 - 5 * 3.3, r"$L_{pix}$ = " + desc["loss_text"], fs=11, ha="left", style="italic")
    # where the losses attach
    ax.text(83, cy + 9.2, "L (1, 3)", fontsize=11, color=COLORS["loss"], weight="bold", ha="center")
    label(98, cyy + 16.2, "BCE (2), adversarial (3)", fs=11, color=COLORS["loss"], weight="bold")

    ax.text(1, 0.8, f"drawn by superres.writeup.arch_diagram from {desc['source']}; "
            "parameter counts from the built modules",
            ha="left", va="bottom", fontsize=9, color="#666666")
    if path is not None:
        fig.savefig(path, dpi=dpi, metadata={"Software": None})
    return fig

