"""Training on several processes (GPUs, or CPU cores with gloo) with fastai's own DDP support.

`accelerate launch` starts N copies of `superres train`. Each fit runs inside fastai's `learn.distrib_ctx()`:
its `DistributedTrainer` wraps the model in DistributedDataParallel and the data in `DistributedDL`, so each
rank trains on its own share of every epoch's items (`--bs` is per process: the global batch is N x bs).
Only rank 0 writes (fastai's `save_model` already skips other ranks; train.py guards the rest), and fastai's
`rank0_first` lets rank 0 create the run folder and fetch downloads before the others read them.

What our stages need on top of fastai, all here:
* `init_distributed`: start Accelerate's process state with the right device, before anything else touches it
  (Accelerate only picks the gloo CPU backend when told `cpu=True`; a later `Accelerator()` reuses the state).
* fastai's `DistributedDL` broadcasts the epoch's shuffled indices as a CUDA tensor: patched to use the CPU
  under gloo.
* The GAN stage: fastai's `GANTrainer` calls `learn.model.switch`, which DDP does not pass on (patched onto
  DDP, as fastai does for `reset`); DDP only syncs the parameters that require grad when it wraps the model,
  and `GANTrainer` has frozen the generator by then (`AllTrainable` unfreezes it just before); each step
  trains one of the two networks (`find_unused_parameters`); and `AdaptiveGANSwitcher` decides on
  `learn.loss`, each rank's own batch loss (fastai gathers only what it logs): `AverageLoss` all-reduces it
  first, so every rank switches at the same step.
* `from_rank0`: time-based decisions (`--minutes-gen`) follow rank 0's clock, so all ranks stop together.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.distributed as dist
from fastai.callback.core import Callback
from fastai.distributed import DistributedDL, DistributedTrainer  # (fastai.distributed needs Accelerate)
from fastai.torch_core import get_model, num_distrib, rank_distrib
from fastai.vision.gan import GANModule
from fastcore.basics import patch
from torch.nn.parallel import DistributedDataParallel


def distributed() -> bool:
    """True in a process that `accelerate launch` started as one of several."""
    return num_distrib() > 1


def is_main() -> bool:
    """Rank 0, the process that writes (true in a single process)."""
    return rank_distrib() == 0


def init_distributed(device: str) -> None:
    """Join the process group (gloo on CPU, NCCL on GPU; each rank on its own GPU). A no-op in one process."""
    if distributed():
        from accelerate import PartialState
        PartialState(cpu=device == "cpu")


def _comm_device() -> str:
    return "cuda" if dist.get_backend() == "nccl" else "cpu"   # NCCL only moves CUDA tensors


def from_rank0(x: float) -> float:
    """`x` as rank 0 has it, on every rank (in one process: `x`)."""
    if not (distributed() and dist.is_initialized()):
        return x
    t = torch.tensor([x], dtype=torch.float64, device=_comm_device())
    dist.broadcast(t, 0)
    return t.item()


@patch
def _broadcast(self: DistributedDL, t, rank):
    "Broadcast the epoch's indices from `rank`: fastai's version moves them to CUDA, which gloo (CPU) cannot use."
    t = torch.tensor(t, dtype=torch.long, device=_comm_device())
    dist.broadcast(t, rank)
    return t.cpu().tolist()


@patch
def switch(self: DistributedDataParallel, gen_mode=None):
    "Pass `GANModule.switch` through the DDP wrapper (fastai does the same for `reset`)."
    self.module.switch(gen_mode)


class AverageLoss(Callback):
    """The training loss averaged over the ranks (the loss of the whole global batch), before any callback
    reads it: the GAN switcher then takes the same decision on every rank."""

    def after_loss(self):
        if self.training:
            loss = self.learn.loss.detach().clone()
            dist.all_reduce(loss)
            self.learn.loss = loss / num_distrib()


class AllTrainable(Callback):
    """Every parameter requires grad when DDP wraps the model (DDP syncs only those); `GANTrainer` froze one
    network in its `before_fit` and freezes it again at each epoch's start."""
    order = DistributedTrainer.order - 1

    def before_fit(self):
        for p in self.learn.model.parameters():
            p.requires_grad_(True)


@contextmanager
def ddp(learn):
    """fastai's `learn.distrib_ctx()` with what our stages need; in a single process it changes nothing.

    SyncBatchNorm only runs on GPUs; the GAN stage trains the generator or the critic at each step, so DDP
    must allow unused parameters there."""
    if not distributed():
        yield learn
        return
    from accelerate.utils import DistributedDataParallelKwargs
    on_cpu = learn.dls.device is None or learn.dls.device.type == "cpu"
    gan = isinstance(get_model(learn.model), GANModule)
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if gan else []
    cbs = [AverageLoss()] + ([AllTrainable()] if gan else [])
    with learn.distrib_ctx(sync_bn=not on_cpu, cpu=on_cpu, kwargs_handlers=handlers), learn.added_cbs(cbs):
        yield learn
