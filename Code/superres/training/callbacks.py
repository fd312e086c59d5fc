"""The fastai callbacks the training stages use (train.py puts them together): speed (bf16 + channels_last),
per-epoch checkpoints and a CSV log that survive a resume, a wall-clock budget, an EMA of the weights, the
critic's pre-training batches and the polish stage's frozen anchor."""
from __future__ import annotations

import json
import time

import torch
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.fp16 import MixedPrecision
from fastai.callback.progress import CSVLogger
from fastai.torch_core import get_model

from superres.training.distributed import from_rank0, is_main


class CPUSpeedup(Callback):
    """bf16 autocast + channels_last on CPU (fastai's MixedPrecision only targets CUDA).

    Only the forward pass runs in bf16: the loss (SSIM's variances in particular) is computed in fp32,
    which bf16 made diverge to NaN; the generator keeps its head in fp32 itself
    (`superres.training.models.Generator`)."""
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


class CudaSpeedup(MixedPrecision):
    """fastai's bf16 mixed precision, plus channels_last."""

    def __init__(self):
        super().__init__(amp_mode="bf16")

    def before_fit(self):
        super().before_fit()
        self.learn.model.to(memory_format=torch.channels_last)


class EpochCheckpoint(Callback):
    """Save model + optimizer after every epoch, and the epoch number, so a stage can resume."""
    order = 70

    def __init__(self, stage):
        self.stage = stage

    def after_epoch(self):
        self.learn.save(f"{self.stage}_last", with_opt=True)   # fastai saves on rank 0 only
        if is_main():
            (self.learn.path / self.learn.model_dir / f"{self.stage}_last.json").write_text(
                json.dumps({"epoch": self.epoch}))


class ResumableCSVLogger(CSVLogger):
    """fastai's CSVLogger, leaving out the header and the skipped epochs when a fit resumes at `start`."""

    def __init__(self, fname, start=0):
        super().__init__(fname=fname, append=start > 0)
        self.start = start

    def before_fit(self):
        if not self.start:
            return super().before_fit()
        # as CSVLogger's, but appending: the log has its header already (CSVLogger writes it here, not per line)
        self.file = (self.path / self.fname).open("a")
        self.old_logger, self.learn.logger = self.logger, self._write_line

    def _write_line(self, log):
        first = log[0] if len(log) else None
        if self.start and isinstance(first, int) and first < self.start:
            return
        super()._write_line(log)


class StepTimer(Callback):
    """Wall seconds per training step, for the record (none when a stage trains for 0 epochs)."""
    def __init__(self):
        super().__init__()
        self.times = []

    def before_fit(self):
        self.times = []

    def before_batch(self):
        self.t0 = time.perf_counter()

    def after_batch(self):
        if self.training:
            self.times.append(time.perf_counter() - self.t0)


class TimeBudget(Callback):
    """Train for `seconds` of wall-clock time: the schedule (one-cycle) follows the elapsed share of the
    budget instead of the step count, and the fit stops at the end of the epoch that would overrun it.
    Use it with a large epoch count; an epoch longer than the budget is cut short. Under DDP every rank
    follows rank 0's clock, so all of them stop at the same step."""
    order = 0   # after TrainEvalCallback (-10) updates pct_train, before ParamScheduler (60) reads it

    def __init__(self, seconds: float):
        self.seconds = seconds

    def elapsed(self) -> float:
        return from_rank0(time.perf_counter() - self.t0)

    def before_fit(self):
        self.t0, self.epoch_s = time.perf_counter(), 0.0

    def before_batch(self):
        if self.training:
            self.learn.pct_train = min(self.elapsed() / self.seconds, 1.0)

    def after_batch(self):
        if self.training and self.elapsed() > self.seconds:
            raise CancelFitException()   # an epoch longer than the whole budget

    def before_epoch(self):
        self.epoch_t0 = self.elapsed()

    def after_epoch(self):
        now = self.elapsed()
        self.epoch_s = max(self.epoch_s, now - self.epoch_t0)
        if now + self.epoch_s > self.seconds:
            raise CancelFitException()


class EMA(Callback):
    """Exponential moving average of the weights, swapped in when the fit ends. (torch's AveragedModel
    deep-copies the model, which the U-Net's weight norm does not allow.)"""
    order = 80

    def __init__(self, decay: float = 0.999, part: str | None = None):
        self.decay, self.part = decay, part   # part: average only this submodule (the GANModule's "generator")

    def averaged(self) -> torch.nn.Module:
        model = get_model(self.learn.model)   # (get_model: without the DDP wrapper)
        return getattr(model, self.part) if self.part else model

    def before_fit(self):
        self.ema = {k: v.detach().clone() for k, v in self.averaged().state_dict().items()}
        self.floats = [k for k, v in self.ema.items() if v.is_floating_point()]

    @torch.no_grad()
    def after_step(self):
        state = self.averaged().state_dict()
        # one fused update for all float tensors (a per-tensor loop costs ~5 ms a step on a GPU)
        torch._foreach_lerp_([self.ema[k] for k in self.floats], [state[k].detach() for k in self.floats],
                             1 - self.decay)
        for k, v in state.items():
            if not v.is_floating_point():
                self.ema[k].copy_(v)

    def after_fit(self):
        self.averaged().load_state_dict(self.ema)


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


class FrozenOutput(Callback):
    """Adds frozen networks' outputs to each batch's targets, yb = (photo, frozen(x), ...): the polish stage's
    anchor (and, for blends, the faithful network's output)."""
    def __init__(self, *models):
        self.models = [m.eval().requires_grad_(False) for m in models]

    def before_fit(self):
        for m in self.models:
            m.to(self.dls.device)

    def before_batch(self):
        with torch.no_grad():
            self.learn.yb = (*self.yb, *(m(self.xb[0]) for m in self.models))
