"""`python -m superres ...` with a probe in every fastai Learner, for test_distributed.py.

The test launches this file with `accelerate launch` as it would launch `-m superres`: the command line is
the real one (`superres.__main__.main`); the probe only watches. After every training step each rank appends
one line to $SUPERRES_PROBE/rank<r>.jsonl (outside the run folder): which photos the batch came from, a
fingerprint of the weights after the step, the loss the callbacks saw and the GAN's mode. The test's photos
are flat grey levels 20, 45, 70, ... so any crop of one says which photo it is.
"""
import hashlib
import json
import os
import sys
from pathlib import Path

import fastai.learner
from fastai.callback.core import Callback
from fastai.torch_core import get_model, rank_distrib

from superres.__main__ import main

GREY0, GREY_STEP = 20, 25


class Probe(Callback):
    order = -100   # first: sees the batch before GeneratedVsReal / GANTrainer rearrange it
    fits = 0

    def before_fit(self):
        Probe.fits += 1
        self.out = Path(os.environ["SUPERRES_PROBE"]) / f"rank{rank_distrib()}.jsonl"

    def before_batch(self):
        if self.training:
            greys = self.yb[0].float().mean(dim=(1, 2, 3)) * 255
            self.photos = [round((g - GREY0) / GREY_STEP) for g in greys.tolist()]

    def after_batch(self):
        if not self.training:
            return
        h = hashlib.sha1()
        for p in get_model(self.learn.model).parameters():
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
        gan = getattr(self.learn, "gan_trainer", None)
        line = {"fit": Probe.fits, "model": type(get_model(self.learn.model)).__name__, "epoch": self.epoch,
                "iter": self.iter, "photos": self.photos, "weights": h.hexdigest(), "loss": self.learn.loss.item(),
                "gen_mode": gan.gen_mode if gan else None}
        with open(self.out, "a") as f:
            f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    fastai.learner.defaults.callbacks.append(Probe)
    sys.exit(main())
