"""Training, as four fastai stages (nanoGPT-style: read it top to bottom).

    1. generator   pre-training: pixel + feature loss, fit_one_cycle             -> generator_faithful.pt
    2. critic      pre-training on generated vs. real patches                    -> critic.pt
    3. gan         GAN fine-tuning, GANLearner.from_learners (AdaptiveGANSwitcher) -> generator_gan.pt
    4. polish      the GAN generator against its own frozen output + the lattice loss -> generator_polished.pt

One run trains one scale (`--scale 4` or `--scale 2`): the generator works at the input's size and its
PixelShuffle head makes the output, so x4 is one network, not a chain. `superres.training.export.export_runs` puts
the x4 and x2 runs into one model folder.

Every stage checkpoints each epoch into <run>/checkpoints and resumes from there when re-run; a stage
whose final weights exist is skipped. <run>/record.json keeps what was done and measured.

On a CPU we train with bf16 autocast and channels_last (about 2x faster here); on a GPU with fastai's
MixedPrecision (bf16) and channels_last. The generator's head and residual add run in fp32 either way (see
`Generator.forward`). `--minutes-gen` / `--minutes-gan` train a stage for a wall-clock
budget: the one-cycle schedule follows the elapsed time instead of the step count (for one-shot runs on lent
GPUs). Under `accelerate launch --num_processes N` each fit runs in fastai's `distrib_ctx` (DDP, data
sharded per rank) and only rank 0 writes: see distributed.py.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
from fastai.callback.training import GradientClip
from fastai.distributed import rank0_first
from fastai.learner import Learner
from fastai.optimizer import Adam
from fastai.torch_core import distrib_barrier, num_distrib
from fastai.vision.gan import AdaptiveGANSwitcher, AdaptiveLoss, GANDiscriminativeLR, GANLearner, accuracy_thresh_expand
from torch import nn

from superres.runtime.model_folder import STAGES  # the stage names, in the order the model card records them
from superres.training.callbacks import (
    EMA,
    CPUSpeedup,
    CudaSpeedup,
    EpochCheckpoint,
    FrozenOutput,
    GeneratedVsReal,
    ResumableCSVLogger,
    StepTimer,
    TimeBudget,
)
from superres.training.data import Degradation, sr_dataloaders
from superres.training.degradations import RealWorld
from superres.training.distributed import ddp, init_distributed, is_main
from superres.training.losses import PolishLoss, WithGrid, WithIdentity, WithLattice, make_loss
from superres.training.metrics import psnr_y, ssim_y
from superres.training.models import (
    CRITIC_INPUTS,
    Generator,
    UnetConfig,
    load_network,
    make_critic,
    n_params,
    save_network,
)
from superres.training.options import add_options, from_options, option


def minutes_option(stage: str, epochs_flag: str):
    """A stage's wall-clock budget (for one-shot runs on lent GPUs: the schedule follows the clock)."""
    return option(0.0, help=f"{stage}: if > 0, train for this many minutes of wall-clock time instead of {epochs_flag}")


@dataclass
class TrainConfig:
    """One training run. Each `option` is also a flag of `python -m superres train` (see options.py)."""
    data: str = option(help="folder(s) of high-resolution photos, comma-separated")
    valid: str | None = option(None, help="validation photos (default: hold out 10% of --data)")
    run_dir: str = option("runs/default", flag="--run", help="run folder (checkpoints, logs, record.json)")
    scale: int = option(4, choices=[2, 4], help="what this run's generator does")
    generator: UnetConfig = field(default_factory=UnetConfig)    # flags --arch, --widen, --nf, --trunk-blocks
    critic_nf: int = option(32, help="width of the critic (channels of its first layer)")
    critic_sees: str = option("image+highpass", choices=list(CRITIC_INPUTS),
                              help="what the critic is shown: the image and its amplified high-pass (what trained the "
                                   "shipped networks), the high-pass only, or the image, its high-pass and its "
                                   "local 4-px pattern (ImageHighPassAndGrid)")
    hr_size: int = option(192, help="side of the high-resolution training crops in pixels; the input crop is "
                                    "hr_size/scale")
    max_side: int = option(768, help="photos are shrunk so that their longer side is at most this before cropping "
                                     "(512: a portrait's face fits in a 256 px crop, as --identity-weight needs)")
    bs: int = option(16, help="batch size")
    repeats: int = option(4, help="random crops per photo per epoch")
    epochs_gen: int = option(8, help="stage 1: generator pre-training epochs")
    lr_gen: float = option(2e-3, help="stage 1: peak learning rate of the one-cycle schedule")
    minutes_gen: float = minutes_option("stage 1", "--epochs-gen")
    ema: float = option(0.999, help="stage 1: decay of the exponential moving average of the generator's weights "
                                    "(0 = off)")
    epochs_critic: int = option(2, help="stage 2: critic pre-training epochs")
    lr_critic: float = option(1e-3, help="stage 2: learning rate")
    epochs_gan: int = option(3, help="stage 3: GAN fine-tuning epochs")
    lr_gan: float = option(1e-4, help="stage 3: learning rate (the critic's is 5x this)")
    minutes_gan: float = minutes_option("stage 3", "--epochs-gan")
    adversarial_weight: float = option(0.3, help="stage 3: weight of the critic's verdict in the generator's loss, "
                                                 "against 50 for the content loss (the fastai lesson: 1; the shipped "
                                                 "x4 network: 0.3, x2: 0.1)")
    gan_weights: tuple = field(init=False)     # (adversarial, content) as GANLearner takes them: __post_init__
    gan_ema: float = option(0.0, help="stage 3: decay of an exponential moving average of the generator's weights "
                                      "over the GAN steps, which is then what the stage saves (0 = off; "
                                      "Real-ESRGAN: 0.999)")
    lattice_weight: float = option(0.03, help="stage 3: weight of the lattice loss that penalises a periodic grid "
                                              "in the output (0 = off)")
    lattice_window: int = option(0, help="stage 3: if > 0, the lattice loss is scored per window of this many "
                                         "output pixels, so dots local to hair or an eye count (0 = the whole crop)")
    grid_weight: float = option(0.0, help="stage 3: weight of the local grid loss (GridLoss: the output's local "
                                          "--scale-px pattern in excess of the photo's, in grey levels of [0, 1]; "
                                          "0 = off)")
    grid_sigma: float = option(4.0, help="stage 3: Gaussian window of the local grid loss, in output pixels")
    epochs_polish: int = option(6, help="stage 4: lattice-polish epochs (constant LR)")
    lr_polish: float = option(5e-5, help="stage 4: learning rate")
    minutes_polish: float = minutes_option("stage 4", "--epochs-polish")
    polish_lattice: float = option(0.03, help="stage 4: weight of the lattice loss (the anchor, L1 to the GAN "
                                              "generator's own output, has weight 1)")
    polish_phase_sigma: float = option(0.0, help="stage 4: if > 0, the anchor's locally periodic part (period = "
                                                 "--scale, Gaussian window of this sigma in output pixels) comes "
                                                 "from the photo: clears dots along edges but teaches the grid "
                                                 "of the faithful network, see the report (0 = off)")
    polish_strengths: str = option("1", help="stage 4: the strengths at which the lattice loss scores the output, "
                                             "comma-separated; below 1 it scores the blend with the faithful "
                                             "network's output, (1-s) faithful + s polished, as the app shows it")
    degradation: str = option("first-order", choices=["first-order", "real"],
                              help="how inputs are made: first-order (blur, resize, noise, JPEG once, on PIL images in "
                                   "the loading workers; the options below) or real (the real-world second-order chain "
                                   "of superres.training.degradations, on whole batches on the training device; "
                                   "of the options "
                                   "below only --clean-prob applies)")
    clean_prob: float = option(0.4, help="share of inputs made by plain bicubic down-scaling (the rest are "
                                         "blurred, resized, noised, JPEG'd)")
    jpeg_prob: float = option(0.8, help="share of JPEG compression among the degraded inputs")
    jpeg_quality: str = option("30,95", help="range of the JPEG qualities, LOW,HIGH (drawn uniformly)")
    blur_prob: float = option(0.5, help="share of Gaussian blur (before down-scaling) among the degraded inputs")
    noise_prob: float = option(0.5, help="share of Gaussian noise among the degraded inputs")
    identity_weight: float = option(0.0, help="stages 1 and 3: weight of the identity loss (distance of dlib's face "
                                              "descriptors of output and photo, on the crops where a face is found; "
                                              "needs the eval extra) added to the content loss (0 = off)")
    loss: str = option("auto", choices=["auto", "feature", "weightfree", "mse"],
                       help="content loss: feature = VGG16_bn activations (needs the ImageNet weights), weightfree = "
                            "L1 + SSIM + image gradients, mse = pixel MSE (what PSNR measures: a last fine-tuning at a "
                            "low LR), auto = feature if the weights can be had, else weightfree")
    pretrained: bool = option(False, help="ImageNet encoder weights (needs internet; default: random init)")
    init: str | None = option(None, help="start the generator from this checkpoint (fine-tuning; its architecture, "
                                         "except --skip, which has no weights; default: from scratch)")
    bf16: bool = option(True, help="train in fp32 (default: bf16 autocast + channels_last)")
    device: str = option("cpu", help="cpu, cuda or cuda:N (default: cuda when a GPU is present)")  # add_arguments
    workers: int = option(0, help="data-loading processes (0 = load in the training process)")
    seed: int = 42

    def __post_init__(self):
        self.gan_weights = (self.adversarial_weight, 50.0)

    def to_dict(self):
        return asdict(self)


# ---- helpers ----------------------------------------------------------------------------------------
def fit_resumable(learn: Learner, name: str, epochs: int, lr, one_cycle: bool = True, minutes: float = 0.0,
                  extra_cbs=()):
    """fit (one-cycle or constant LR), resuming from `<name>_last` if an earlier run was interrupted.
    With `minutes` > 0 the fit runs for that wall-clock budget (TimeBudget) instead of `epochs`."""
    ckdir = learn.path / learn.model_dir
    state = ckdir / f"{name}_last.json"
    start = 0
    if state.exists():
        start = json.loads(state.read_text())["epoch"] + 1
        learn.load(f"{name}_last", with_opt=True)
        print(f"[{name}] resuming at epoch {start}/{epochs}")
    timer = StepTimer()
    cbs = [EpochCheckpoint(name), timer, *extra_cbs]
    if is_main():   # one log, written by rank 0
        cbs.append(ResumableCSVLogger(f"logs/{name}.csv", start))
    if minutes > 0:
        if start:
            raise RuntimeError(f"[{name}] a time-budget stage cannot resume; delete {state} to start it again")
        epochs = 10_000
        cbs.append(TimeBudget(60 * minutes))
    if start < epochs:
        with ddp(learn):
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
        if is_main():
            (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
            (self.path / "logs").mkdir(parents=True, exist_ok=True)
        self.record_path = self.path / "record.json"
        self.record = json.loads(self.record_path.read_text()) if self.record_path.exists() else {"stages": {}}
        self.record["config"] = cfg.to_dict()
        self.save_record()

    def ckpt(self, name) -> Path:
        return self.path / "checkpoints" / name

    def save_record(self):
        if is_main():
            self.record_path.write_text(json.dumps(self.record, indent=2, default=str))

    def learner(self, dls, model, loss_func, metrics=(), bf16=None, **kwargs) -> Learner:
        bf16 = self.cfg.bf16 if bf16 is None else bf16
        cbs = [GradientClip(1.0)]
        if bf16:
            cbs.append(CPUSpeedup() if self.cfg.device == "cpu" else CudaSpeedup())
        return Learner(dls, model, loss_func=loss_func, metrics=list(metrics), cbs=cbs, path=self.path,
                       model_dir="checkpoints", **kwargs)

    def finish_stage(self, name, learn, times, started, **extra):
        res = learn.validate()
        names = ["valid_loss"] + [m.name for m in learn.metrics]
        self.record["stages"][name] = {
            "epochs": extra.pop("epochs"), "wall_s": round(time.time() - started, 1),
            "steps": len(times), "s_per_step": round(sum(times[2:]) / (len(times) - 2), 3) if len(times) > 2 else None,
            "valid": {k: float(v) for k, v in zip(names, res, strict=False) if v is not None}, **extra}
        self.save_record()
        print(f"[{name}] done: {self.record['stages'][name]}")


# ---- the stages -------------------------------------------------------------------------------------
def degradation(cfg: TrainConfig) -> Degradation | RealWorld:
    """The degradations a run trains on (blur sigma is in high-resolution pixels, so x4 gets twice x2's).
    Plain bicubic inputs (`clean_prob`) are the benchmark convention and what a resized clean photo is."""
    if cfg.degradation == "real":
        return RealWorld(scale=cfg.scale, clean_prob=cfg.clean_prob)
    blur = {2: (0.2, 1.5), 4: (0.4, 3.0)}[cfg.scale]
    try:
        low, high = (int(q) for q in cfg.jpeg_quality.split(","))
    except ValueError:
        raise ValueError(f"--jpeg-quality must be LOW,HIGH (e.g. 30,95), got {cfg.jpeg_quality!r}") from None
    if not 1 <= low <= high <= 100:
        raise ValueError(f"--jpeg-quality needs 1 <= LOW <= HIGH <= 100, got {cfg.jpeg_quality!r}")
    return Degradation(scale=cfg.scale, clean_prob=cfg.clean_prob, jpeg_prob=cfg.jpeg_prob, blur_sigma=blur,
                       jpeg_quality=(low, high), blur_prob=cfg.blur_prob, noise_prob=cfg.noise_prob)


def dataloaders(cfg: TrainConfig):
    return sr_dataloaders(cfg.data, cfg.valid, scale=cfg.scale, hr_size=cfg.hr_size, bs=cfg.bs,
                          repeats=cfg.repeats, degradation=degradation(cfg), max_side=cfg.max_side, seed=cfg.seed,
                          num_workers=cfg.workers, device=torch.device(cfg.device))


def stage_epochs(learn: Learner, epochs: int, minutes: float) -> int:
    """Epochs a stage really ran (a time budget decides it at run time)."""
    return learn.epoch + 1 if minutes > 0 else epochs


def train_generator(run: Run, dls, loss_func) -> Generator:
    """Stage 1: the generator learns to restore and upscale (pixel + feature loss), with an EMA of its weights."""
    cfg, out = run.cfg, run.ckpt("generator_faithful.pt")
    if out.exists():
        return load_network(out)
    started = time.time()
    if cfg.init:   # fine-tuning: the architecture and weights come from the checkpoint, the skip from --skip
        model = load_network(cfg.init)
        if model.cfg.scale != cfg.scale:
            raise ValueError(f"--init {cfg.init} is a x{model.cfg.scale} generator, not x{cfg.scale}")
        if model.cfg.skip != cfg.generator.skip:   # it has no weights: the residual learns the new one
            print(f"[superres] --init {cfg.init}: its {model.cfg.skip} skip becomes {cfg.generator.skip} (--skip)")
            model.set_skip(cfg.generator.skip)
    else:
        model = rank0_first(Generator, cfg.generator, pretrained=cfg.pretrained)   # one ImageNet download
    learn = run.learner(dls, model, loss_func, metrics=[psnr_y, ssim_y])
    if cfg.pretrained and not cfg.init:  # the lesson's recipe: train the decoder first, then everything
        learn.freeze()
        with ddp(learn):
            learn.fit_one_cycle(1, cfg.lr_gen)
        learn.unfreeze()
    times = fit_resumable(learn, "generator", cfg.epochs_gen, cfg.lr_gen, minutes=cfg.minutes_gen,
                          extra_cbs=[EMA(cfg.ema)] if cfg.ema else [])
    if is_main():   # under DDP every rank has the same weights; rank 0 writes them
        save_network(model, out)
    run.finish_stage("generator", learn, times, started, epochs=stage_epochs(learn, cfg.epochs_gen, cfg.minutes_gen),
                     params=n_params(model), loss=getattr(loss_func, "name", type(loss_func).__name__), ema=cfg.ema,
                     init=cfg.init)
    return model


def critic_learner(run: Run, dls) -> Learner:
    critic = make_critic(nf=run.cfg.critic_nf, sees=run.cfg.critic_sees)
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
    generator.to(dls.device)
    learn.add_cb(GeneratedVsReal(generator))
    times = fit_resumable(learn, "critic", cfg.epochs_critic, cfg.lr_critic)
    learn.remove_cb(GeneratedVsReal)
    if is_main():
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
    if cfg.lattice_weight:   # GAN stage only: in the faithful stage it teaches the network to add noise
        loss_func = WithLattice(loss_func, cfg.lattice_weight, cfg.lattice_window)
    if cfg.grid_weight:
        loss_func = WithGrid(loss_func, cfg.grid_weight, cfg.scale, cfg.grid_sigma)
    learn_gen = run.learner(dls, gen, loss_func, bf16=False)
    learn_crit = critic_learner(run, dls)
    learn_crit.model.load_state_dict(critic.state_dict())
    learn = GANLearner.from_learners(
        learn_gen, learn_crit, weights_gen=cfg.gan_weights, switcher=AdaptiveGANSwitcher(critic_thresh=0.65),
        opt_func=partial(Adam, mom=0.0), show_img=False, cbs=[GANDiscriminativeLR(mult_lr=5.0)],
        metrics=[psnr_y, ssim_y], path=run.path, model_dir="checkpoints")
    times = fit_resumable(learn, "gan", cfg.epochs_gan, cfg.lr_gan, one_cycle=False, minutes=cfg.minutes_gan,
                          extra_cbs=[EMA(cfg.gan_ema, part="generator")] if cfg.gan_ema else [])
    if is_main():   # under DDP every rank has the same weights; rank 0 writes them
        save_network(gen, out)
    run.finish_stage("gan", learn, times, started, epochs=stage_epochs(learn, cfg.epochs_gan, cfg.minutes_gan),
                     weights_gen=list(cfg.gan_weights), lattice_weight=cfg.lattice_weight,
                     lattice_window=cfg.lattice_window, grid_weight=cfg.grid_weight, grid_sigma=cfg.grid_sigma,
                     ema=cfg.gan_ema)
    return gen


def photo_only(metric):
    """A metric on (pred, photo) for batches whose targets are (photo, anchor): the polish stage's."""
    def on_photo(pred, photo, *anchor):
        return metric(pred, photo)
    on_photo.__name__ = metric.__name__
    return on_photo


def polish(run: Run, dls) -> Generator:
    """Stage 4: the lattice polish. The GAN generator is fine-tuned against its own output before the polish (L1
    to a frozen copy, which keeps its texture) plus the lattice loss against the photo, in fp32. Why: the GAN
    stage's lattice loss alone leaves a 2-px column pattern; a few epochs of this stage remove it at every
    strength above 0 for a fraction of a dB, and more epochs cost PSNR without lowering it further
    (docs/decisions.md)."""
    cfg, out, src = run.cfg, run.ckpt("generator_polished.pt"), run.ckpt("generator_gan.pt")
    if out.exists():
        return load_network(out)
    if not src.exists():
        raise FileNotFoundError(f"the polish stage starts from the gan stage's {src}: run --stages gan first")
    started = time.time()
    strengths = tuple(float(s) for s in cfg.polish_strengths.split(","))
    loss_func = PolishLoss(cfg.polish_lattice, cfg.polish_phase_sigma, cfg.scale, strengths)
    learn = run.learner(dls, load_network(src), loss_func, metrics=[photo_only(psnr_y), photo_only(ssim_y)],
                        bf16=False)
    # yb = (photo, anchor) or, to score blends, (photo, anchor, faithful output; `train` always has stage 1's)
    frozen = [load_network(src)] + ([load_network(run.ckpt("generator_faithful.pt"))] if strengths != (1.0,) else [])
    learn.add_cb(FrozenOutput(*frozen))
    times = fit_resumable(learn, "polish", cfg.epochs_polish, cfg.lr_polish, one_cycle=False,
                          minutes=cfg.minutes_polish)
    if is_main():
        save_network(learn.model, out)
    run.finish_stage("polish", learn, times, started, epochs=stage_epochs(learn, cfg.epochs_polish, cfg.minutes_polish),
                     loss=loss_func.name, lattice_weight=cfg.polish_lattice, phase_sigma=cfg.polish_phase_sigma,
                     strengths=list(strengths), lr=cfg.lr_polish, hr_size=cfg.hr_size,
                     bs=cfg.bs, device=cfg.device, bf16=False)   # its own settings: it may run elsewhere than 1-3
    return learn.model


def train(cfg: TrainConfig, stages=STAGES) -> Run:
    """Run the stages in order, skipping finished ones."""
    torch.manual_seed(cfg.seed)
    init_distributed(cfg.device)         # under `accelerate launch`; nothing in a single process
    run = rank0_first(Run, cfg)          # rank 0 makes the folder and the record, then the others read them
    loss_func = rank0_first(make_loss, cfg.loss)   # rank 0 downloads VGG weights (if any) first
    if cfg.identity_weight:
        loss_func = WithIdentity(loss_func, cfg.identity_weight)
    run.record["loss"] = loss_func.name
    run.record["processes"] = max(num_distrib(), 1)
    run.record["degradation"] = {f"x{cfg.scale}": degradation(cfg).to_dict()}
    run.save_record()
    dls = dataloaders(cfg)
    generator = train_generator(run, dls, loss_func)
    if "critic" in stages or "gan" in stages:
        critic = train_critic(run, dls, generator)
        if "gan" in stages:
            train_gan(run, dls, loss_func, generator, critic)
    if "polish" in stages:
        polish(run, dls)
    distrib_barrier()                    # every rank returns once rank 0 has written everything
    return run


# ---- CLI --------------------------------------------------------------------------------------------
def add_arguments(p):
    add_options(p, TrainConfig(data=""))
    add_options(p, UnetConfig())
    p.set_defaults(device="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of the stages to run"
                                                              " (default: %(default)s)")


def run(args):
    cfg = from_options(TrainConfig, args, generator=from_options(UnetConfig, args, scale=args.scale))
    stages = [s for s in args.stages.split(",") if s]
    train(cfg, stages)
    print(f"trained {cfg.run_dir}; export with: python -m superres export --run {cfg.run_dir} [--run <x2 run>]")
