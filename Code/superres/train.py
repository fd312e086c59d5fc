"""Training, as four fastai stages (nanoGPT-style: read it top to bottom).

    1. generator   pre-training: pixel + feature loss, fit_one_cycle             -> generator_faithful.pt
    2. critic      pre-training on generated vs. real patches                    -> critic.pt
    3. gan         GAN fine-tuning, GANLearner.from_learners (AdaptiveGANSwitcher) -> generator_gan.pt
    4. upsampler   x2 behind the frozen generator, for x4 = upsampler(generator(x)) -> upsampler.pt

Every stage checkpoints each epoch into <run>/checkpoints and resumes from there when re-run; a stage
whose final weights exist is skipped. <run>/record.json keeps what was done and measured, and
`export_run` turns a finished run into the ONNX model folder + model card.

On a CPU we train with bf16 autocast and channels_last (about 2x faster here). On a GPU fastai's
device handling applies (`--device cuda`); for several GPUs wrap `train` in fastai's `distrib_ctx`
(`accelerate launch` + `with learn.distrib_ctx(): ...`), see fastai's distributed docs.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
from fastai.callback.core import Callback
from fastai.callback.training import GradientClip
from fastai.callback.progress import CSVLogger
from fastai.learner import Learner
from fastai.optimizer import Adam
from fastai.vision.gan import (AdaptiveGANSwitcher, AdaptiveLoss, GANDiscriminativeLR, GANLearner,
                               accuracy_thresh_expand)
from torch import nn

from .data import Degradation, sr_dataloaders
from .losses import make_loss
from .metrics import psnr_y, ssim_y
from .models import Chain, Generator, UnetConfig, make_critic, n_params

STAGES = ("generator", "critic", "gan", "upsampler")


@dataclass
class TrainConfig:
    data: str                                  # folder of high-resolution photos
    valid: str | None = None                   # validation photos (default: 10% of `data`)
    run_dir: str = "runs/default"
    generator: UnetConfig = field(default_factory=UnetConfig)
    upsampler: UnetConfig = field(default_factory=UnetConfig)
    critic_nf: int = 32
    hr_size: int = 128                         # x2 target crop (input is hr_size/2)
    bs: int = 16
    ups_hr_size: int = 192                     # x4 target crop for the up-sampler stage
    ups_bs: int = 8
    repeats: int = 4                           # crops per photo per epoch
    epochs_gen: int = 8
    lr_gen: float = 2e-3
    epochs_critic: int = 2
    lr_critic: float = 1e-3
    epochs_gan: int = 3
    lr_gan: float = 1e-4
    gan_weights: tuple = (1.0, 50.0)           # (adversarial, pixel/feature) as in the lesson
    epochs_ups: int = 6
    lr_ups: float = 2e-3
    loss: str = "auto"                         # auto | feature | weightfree
    pretrained: bool = False                   # ImageNet encoder (needs internet)
    bf16: bool = True                          # CPU bf16 autocast + channels_last
    device: str = "cpu"
    seed: int = 42

    def to_dict(self):
        return asdict(self)


# ---- callbacks --------------------------------------------------------------------------------------
class CPUSpeedup(Callback):
    """bf16 autocast + channels_last on CPU (fastai's MixedPrecision only targets CUDA).

    Only the forward pass runs in bf16: the loss (SSIM's variances in particular) is computed in fp32,
    which bf16 made diverge to NaN."""
    order = 10

    def before_fit(self):
        self.learn.model.to(memory_format=torch.channels_last)

    def before_batch(self):
        self.learn.xb = tuple(x.contiguous(memory_format=torch.channels_last) for x in self.xb)
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16)
        self.autocast.__enter__()

    def after_pred(self):
        self.autocast.__exit__(None, None, None)
        self.learn.pred = self.pred.float()


class EpochCheckpoint(Callback):
    """Save model + optimizer after every epoch, and the epoch number, so a stage can resume."""
    order = 70

    def __init__(self, stage):
        self.stage = stage

    def after_epoch(self):
        self.learn.save(f"{self.stage}_last", with_opt=True)
        (self.learn.path / self.learn.model_dir / f"{self.stage}_last.json").write_text(
            json.dumps({"epoch": self.epoch}))


class ResumableCSVLogger(CSVLogger):
    """fastai's CSVLogger, leaving out the header and the skipped epochs when a fit resumes at `start`."""

    def __init__(self, fname, start=0):
        super().__init__(fname=fname, append=start > 0)
        self.start = start

    def _write_line(self, log):
        first = log[0] if len(log) else None
        if self.start and (first == "epoch" or (isinstance(first, int) and first < self.start)):
            return
        super()._write_line(log)


class StepTimer(Callback):
    """Wall seconds per training step, for the record."""
    def before_fit(self):
        self.times = []

    def before_batch(self):
        self.t0 = time.perf_counter()

    def after_batch(self):
        if self.training:
            self.times.append(time.perf_counter() - self.t0)


class GeneratedVsReal(Callback):
    """Critic pre-training batches: the generator's outputs labelled 0, the real targets labelled 1."""
    def __init__(self, generator):
        self.generator = generator

    def before_batch(self):
        with torch.no_grad():
            fake = self.generator.eval()(self.xb[0]).clamp(0, 1)
        real = self.yb[0]
        self.learn.xb = (torch.cat([fake, real]),)
        self.learn.yb = (torch.cat([fake.new_zeros(len(fake)), real.new_ones(len(real))]),)


# ---- helpers ----------------------------------------------------------------------------------------
def save_network(model: Generator, path):
    torch.save({"config": model.cfg.to_dict(), "model": {k: v.contiguous() for k, v in model.state_dict().items()}},
               path)


def load_network(path) -> Generator:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = Generator(UnetConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model


def fit_resumable(learn: Learner, name: str, epochs: int, lr, one_cycle: bool = True):
    """fit (one-cycle or constant LR), resuming from `<name>_last` if an earlier run was interrupted."""
    ckdir = learn.path / learn.model_dir
    state = ckdir / f"{name}_last.json"
    start = 0
    if state.exists():
        start = json.loads(state.read_text())["epoch"] + 1
        learn.load(f"{name}_last", with_opt=True)
        print(f"[{name}] resuming at epoch {start}/{epochs}")
    timer = StepTimer()
    cbs = [EpochCheckpoint(name), ResumableCSVLogger(f"logs/{name}.csv", start), timer]
    if start < epochs:
        if one_cycle:
            learn.fit_one_cycle(epochs, lr, start_epoch=start, cbs=cbs)
        else:
            learn.fit(epochs, lr, start_epoch=start, cbs=cbs)
    return timer.times


class Run:
    """A run folder: checkpoints/, logs/, record.json."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.path = Path(cfg.run_dir)
        (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
        (self.path / "logs").mkdir(parents=True, exist_ok=True)
        self.record_path = self.path / "record.json"
        self.record = json.loads(self.record_path.read_text()) if self.record_path.exists() else {"stages": {}}
        self.record["config"] = cfg.to_dict()
        self.save_record()

    def ckpt(self, name) -> Path:
        return self.path / "checkpoints" / name

    def save_record(self):
        self.record_path.write_text(json.dumps(self.record, indent=2, default=str))

    def learner(self, dls, model, loss_func, metrics=(), bf16=None, **kwargs) -> Learner:
        bf16 = self.cfg.bf16 if bf16 is None else bf16
        cbs = [GradientClip(1.0)] + ([CPUSpeedup()] if (bf16 and self.cfg.device == "cpu") else [])
        return Learner(dls, model, loss_func=loss_func, metrics=list(metrics), cbs=cbs, path=self.path,
                       model_dir="checkpoints", **kwargs)

    def finish_stage(self, name, learn, times, started, **extra):
        res = learn.validate()
        names = ["valid_loss"] + [m.name for m in learn.metrics]
        self.record["stages"][name] = {
            "epochs": extra.pop("epochs"), "wall_s": round(time.time() - started, 1),
            "steps": len(times), "s_per_step": round(sum(times[2:]) / (len(times) - 2), 3) if len(times) > 2 else None,
            "valid": {k: float(v) for k, v in zip(names, res) if v is not None}, **extra}
        self.save_record()
        print(f"[{name}] done: {self.record['stages'][name]}")


# ---- the stages -------------------------------------------------------------------------------------
# The degradations each stage trains on (blur sigma is in high-resolution pixels, so x4 gets twice x2's).
DEGRADATIONS = {2: Degradation(scale=2), 4: Degradation(scale=4, blur_sigma=(0.4, 3.0))}


def x2_dataloaders(cfg: TrainConfig):
    return sr_dataloaders(cfg.data, cfg.valid, scale=2, hr_size=cfg.hr_size, bs=cfg.bs, repeats=cfg.repeats,
                          degradation=DEGRADATIONS[2], seed=cfg.seed, device=torch.device(cfg.device))


def x4_dataloaders(cfg: TrainConfig):
    return sr_dataloaders(cfg.data, cfg.valid, scale=4, hr_size=cfg.ups_hr_size, bs=cfg.ups_bs, repeats=cfg.repeats,
                          degradation=DEGRADATIONS[4], seed=cfg.seed, device=torch.device(cfg.device))


def train_generator(run: Run, dls, loss_func) -> Generator:
    """Stage 1: the generator learns to restore and double (pixel + feature loss)."""
    cfg, out = run.cfg, run.ckpt("generator_faithful.pt")
    if out.exists():
        return load_network(out)
    started = time.time()
    model = Generator(cfg.generator, pretrained=cfg.pretrained)
    learn = run.learner(dls, model, loss_func, metrics=[psnr_y, ssim_y])
    if cfg.pretrained:  # the lesson's recipe: train the decoder first, then everything
        learn.freeze()
        learn.fit_one_cycle(1, cfg.lr_gen)
        learn.unfreeze()
    times = fit_resumable(learn, "generator", cfg.epochs_gen, cfg.lr_gen)
    save_network(model, out)
    run.finish_stage("generator", learn, times, started, epochs=cfg.epochs_gen, params=n_params(model),
                     loss=type(loss_func).__name__)
    return model


def critic_learner(run: Run, dls) -> Learner:
    critic = make_critic(nf=run.cfg.critic_nf)
    return run.learner(dls, critic, AdaptiveLoss(nn.BCEWithLogitsLoss()), metrics=[accuracy_thresh_expand],
                       bf16=False)


def train_critic(run: Run, dls, generator: Generator) -> nn.Module:
    """Stage 2: the critic learns to tell the generator's outputs from real photos."""
    cfg, out = run.cfg, run.ckpt("critic.pt")
    learn = critic_learner(run, dls)
    if out.exists():
        learn.model.load_state_dict(torch.load(out, map_location="cpu"))
        return learn.model
    started = time.time()
    learn.add_cb(GeneratedVsReal(generator))
    times = fit_resumable(learn, "critic", cfg.epochs_critic, cfg.lr_critic)
    learn.remove_cb(GeneratedVsReal)
    torch.save(learn.model.state_dict(), out)
    learn.add_cb(GeneratedVsReal(generator))
    run.finish_stage("critic", learn, times, started, epochs=cfg.epochs_critic, params=n_params(learn.model))
    learn.remove_cb(GeneratedVsReal)
    return learn.model


def train_gan(run: Run, dls, loss_func, generator: Generator, critic: nn.Module) -> Generator:
    """Stage 3: GAN fine-tuning from the faithful generator, fastai's GANLearner (lesson settings)."""
    cfg, out = run.cfg, run.ckpt("generator_gan.pt")
    if out.exists():
        return load_network(out)
    started = time.time()
    gen = Generator(generator.cfg)
    gen.load_state_dict(generator.state_dict())
    learn_gen = run.learner(dls, gen, loss_func, bf16=False)
    learn_crit = critic_learner(run, dls)
    learn_crit.model.load_state_dict(critic.state_dict())
    learn = GANLearner.from_learners(
        learn_gen, learn_crit, weights_gen=cfg.gan_weights, switcher=AdaptiveGANSwitcher(critic_thresh=0.65),
        opt_func=partial(Adam, mom=0.0), show_img=False, cbs=[GANDiscriminativeLR(mult_lr=5.0)],
        metrics=[psnr_y, ssim_y], path=run.path, model_dir="checkpoints")
    times = fit_resumable(learn, "gan", cfg.epochs_gan, cfg.lr_gan, one_cycle=False)
    save_network(gen, out)
    run.finish_stage("gan", learn, times, started, epochs=cfg.epochs_gan, weights_gen=list(cfg.gan_weights))
    return gen


def train_upsampler(run: Run, dls4, loss_func, generator: Generator) -> Generator:
    """Stage 4: a second x2 network behind the frozen (faithful) generator, trained end to end on x4 pairs."""
    cfg, out = run.cfg, run.ckpt("upsampler.pt")
    if out.exists():
        return load_network(out)
    started = time.time()
    ups = Generator(cfg.upsampler, pretrained=cfg.pretrained)
    learn = run.learner(dls4, Chain(generator, ups), loss_func, metrics=[psnr_y, ssim_y])
    times = fit_resumable(learn, "upsampler", cfg.epochs_ups, cfg.lr_ups)
    save_network(ups, out)
    run.finish_stage("upsampler", learn, times, started, epochs=cfg.epochs_ups, params=n_params(ups))
    return ups


def train(cfg: TrainConfig, stages=STAGES, export_to=None) -> Run:
    """Run the stages in order (skipping finished ones), then export if `export_to` is given."""
    torch.manual_seed(cfg.seed)
    run = Run(cfg)
    loss_func = make_loss(cfg.loss)
    run.record["loss"] = loss_func.name
    run.record["degradation"] = {f"x{k}": d.to_dict() for k, d in DEGRADATIONS.items()}
    run.save_record()
    dls = x2_dataloaders(cfg)
    generator = train_generator(run, dls, loss_func)
    if "critic" in stages or "gan" in stages:
        critic = train_critic(run, dls, generator)
        if "gan" in stages:
            train_gan(run, dls, loss_func, generator, critic)
    if "upsampler" in stages:
        train_upsampler(run, x4_dataloaders(cfg), loss_func, generator)
    if export_to:
        export_run(run.path, export_to)
    return run


def export_run(run_dir, out_dir) -> dict:
    """ONNX model folder + model card from a finished run."""
    from .export import export_models
    run_dir = Path(run_dir)
    record = json.loads((run_dir / "record.json").read_text())
    ck = run_dir / "checkpoints"
    faithful, ups = load_network(ck / "generator_faithful.pt"), load_network(ck / "upsampler.pt")
    gan_path = ck / "generator_gan.pt"
    gan = load_network(gan_path) if gan_path.exists() else faithful
    cfg = record["config"]
    card = {
        "data": {"train": cfg["data"], "valid": cfg["valid"], "hr_crop": cfg["hr_size"],
                 "degradation": record.get("degradation")},
        "losses": {"generator": record.get("loss"), "critic": "BCEWithLogits (AdaptiveLoss)",
                   "gan": f"adversarial + {record.get('loss')} weighted {cfg['gan_weights']}"},
        "stages": record["stages"],
        "training": {"device": cfg["device"], "bf16": cfg["bf16"], "pretrained_encoder": cfg["pretrained"]},
    }
    return export_models(faithful.eval(), gan.eval(), ups.eval(), out_dir, card)


# ---- CLI --------------------------------------------------------------------------------------------
def add_arguments(p):
    d = TrainConfig(data="")
    p.add_argument("--data", required=True, help="folder of high-resolution photos")
    p.add_argument("--valid", default=None, help="validation photos (default: hold out 10%% of --data)")
    p.add_argument("--run", default=d.run_dir, help="run folder (checkpoints, logs, record.json)")
    p.add_argument("--arch", default=UnetConfig.arch, help="encoder: xresnet18, xresnet34, resnet18, resnet34")
    p.add_argument("--widen", type=float, default=UnetConfig.widen, help="xresnet width multiplier")
    p.add_argument("--ups-widen", type=float, default=UnetConfig.widen, help="up-sampler width multiplier")
    p.add_argument("--pretrained", action="store_true", help="ImageNet encoder weights (needs internet)")
    p.add_argument("--loss", default=d.loss, choices=["auto", "feature", "weightfree"])
    for name in ("hr_size", "bs", "ups_hr_size", "ups_bs", "repeats", "epochs_gen", "epochs_critic",
                 "epochs_gan", "epochs_ups", "critic_nf"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("lr_gen", "lr_critic", "lr_gan", "lr_ups"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    p.add_argument("--no-bf16", action="store_true", help="train in fp32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of " + ",".join(STAGES))
    p.add_argument("--export-to", default=None, help="model folder to export into when done (default <run>/export)")


def run(args):
    cfg = TrainConfig(
        data=args.data, valid=args.valid, run_dir=args.run, loss=args.loss, pretrained=args.pretrained,
        generator=UnetConfig(arch=args.arch, widen=args.widen),
        upsampler=UnetConfig(arch=args.arch, widen=args.ups_widen),
        bf16=not args.no_bf16 and args.device == "cpu", device=args.device,
        **{k: getattr(args, k) for k in ("hr_size", "bs", "ups_hr_size", "ups_bs", "repeats", "epochs_gen",
                                          "epochs_critic", "epochs_gan", "epochs_ups", "critic_nf", "lr_gen",
                                          "lr_critic", "lr_gan", "lr_ups")})
    stages = [s for s in args.stages.split(",") if s]
    export_to = args.export_to or (Path(args.run) / "export" if "upsampler" in stages else None)
    train(cfg, stages, export_to)
    if export_to:
        print(f"exported to {export_to}")
