"""`superres train` under `accelerate launch` on 2 CPU processes (gloo), for real, every stage and a resume.

The generator trains for a 6 s budget (`--minutes-gen`), the critic 1 epoch, the GAN 2 epochs, then a resumed
GAN epoch. `Code/tests/ddp_probe.py` is `python -m superres` plus a probe that records, per rank and per
training step, which photos the batch came from and a fingerprint of the weights after the step. The photos are
8 flat grey squares, so a crop tells which photo it came from; with `--repeats 1` and `--bs 2` each rank trains
on 4 of the 8 photos per epoch, in 2 steps."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, free_port

pytestmark = pytest.mark.slow
PROBE = REPO / "Code" / "tests" / "ddp_probe.py"
N_PHOTOS = 8
TINY = ["--scale", "2", "--hr-size", "64", "--bs", "2", "--repeats", "1", "--widen", "0.25", "--nf", "8",
        "--trunk-blocks", "1", "--critic-nf", "16", "--loss", "weightfree", "--device", "cpu",
        "--minutes-gen", "0.1", "--epochs-critic", "1", "--lr-critic", "1e-2", "--lr-gan", "1e-3",
        "--epochs-polish", "1"]
# (the higher learning rates make the critic good enough within its few steps that the GAN switcher hands over
# to the generator: the GAN stage then trains both networks)


def accelerate_launch(cwd, probe_dir, *train_args):
    """`accelerate launch` with 2 processes. (Its --multi_gpu means "start N processes with torch.distributed";
    on a machine without GPUs each one trains on the CPU with gloo.)"""
    probe_dir.mkdir()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), str(PROBE), "train", *train_args]
    env = {**os.environ, "SUPERRES_PROBE": str(probe_dir),
           "PYTHONPATH": os.pathsep.join([str(REPO / "Code"), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"launch failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    return [[json.loads(line) for line in (probe_dir / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]


def check_ranks_agree(steps0, steps1):
    """Same steps on both ranks, different photos in each step, the same weights after every step, and the same
    loss (the global batch's: the GAN switcher decides on it)."""
    assert steps0 and len(steps0) == len(steps1)
    for a, b in zip(steps0, steps1, strict=True):
        assert (a["fit"], a["epoch"], a["iter"], a["gen_mode"]) == (b["fit"], b["epoch"], b["iter"], b["gen_mode"])
        assert a["weights"] == b["weights"], f"weights differ across ranks after {a}"
        assert a["loss"] == b["loss"]
        assert not set(a["photos"]) & set(b["photos"])
    # per epoch the two ranks share out all photos between them, each photo once
    for key in {(s["fit"], s["epoch"]) for s in steps0}:
        seen = [p for s in steps0 + steps1 if (s["fit"], s["epoch"]) == key for p in s["photos"]]
        assert sorted(seen) == list(range(N_PHOTOS)), (key, seen)


def csv_epochs(path):
    lines = path.read_text().strip().splitlines()
    assert lines[0].startswith("epoch,") and sum(line.startswith("epoch,") for line in lines) == 1
    return [int(line.split(",")[0]) for line in lines[1:]]


def test_two_processes_train_every_stage_in_step_then_resume(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(N_PHOTOS):
        Image.fromarray(np.full((72, 80, 3), 20 + 25 * i, np.uint8)).save(photos / f"{i}.png")
    args = ["--data", str(photos), "--valid", str(photos), "--run", "run", *TINY]

    rank0, rank1 = accelerate_launch(tmp_path, tmp_path / "probe1", *args, "--epochs-gan", "2")
    check_ranks_agree(rank0, rank1)
    models = [s["model"] for s in rank0]
    n_gen = models.index("Sequential")   # a 6 s budget (--minutes-gen): both ranks stopped at rank 0's step
    # then 2 steps per epoch: critic 1 epoch, GAN 2, polish 1
    assert n_gen >= 2 and models == ["Generator"] * n_gen + ["Sequential"] * 2 + ["GANModule"] * 4 + ["Generator"] * 2
    for fit in {s["fit"] for s in rank0}:
        fingerprints = [s["weights"] for s in rank0 if s["fit"] == fit]
        assert len(set(fingerprints)) == len(fingerprints)   # every step changed the weights
    gan_modes = {s["gen_mode"] for s in rank0 if s["model"] == "GANModule"}
    assert gan_modes == {True, False}, "the GAN stage trained both the generator and the critic"

    # one run folder, written once (by rank 0): no second log header, no stray files
    run = tmp_path / "run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "probe1", "run"]
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()) == sorted(
        ["record.json", "logs/generator.csv", "logs/critic.csv", "logs/gan.csv", "logs/polish.csv"]
        + [f"checkpoints/{n}"
           for n in ("generator_faithful.pt", "critic.pt", "generator_gan.pt", "generator_polished.pt")]
        + [f"checkpoints/{s}_last.{e}" for s in ("generator", "critic", "gan", "polish") for e in ("pth", "json")])
    record = json.loads((run / "record.json").read_text())
    assert record["processes"] == 2 and set(record["stages"]) == {"generator", "critic", "gan", "polish"}
    gen_epochs = csv_epochs(run / "logs" / "generator.csv")   # (a time-budget stage logs no row for its last epoch)
    assert gen_epochs == list(range(len(gen_epochs))) and csv_epochs(run / "logs" / "gan.csv") == [0, 1]

    # resume: the GAN stage was "interrupted" after its 2 epochs of 3; both ranks go on from its checkpoint
    (run / "checkpoints" / "generator_gan.pt").unlink()
    rank0, rank1 = accelerate_launch(tmp_path, tmp_path / "probe2", *args, "--epochs-gan", "3")
    check_ranks_agree(rank0, rank1)
    assert [(s["model"], s["epoch"]) for s in rank0] == [("GANModule", 2)] * 2   # only the missing epoch
    assert csv_epochs(run / "logs" / "gan.csv") == [0, 1, 2]
    assert csv_epochs(run / "logs" / "generator.csv") == gen_epochs
    assert (run / "checkpoints" / "generator_gan.pt").exists()
    assert json.loads((run / "record.json").read_text())["stages"]["gan"]["epochs"] == 3
