#!/usr/bin/env bash
# One-shot training on a lent GPU: the x4 and the x2 generator, each with its critic and GAN stage, side by
# side (each process uses half the CPU cores for data loading), for a fixed wall-clock budget.
#
#   bash Code/train_gpu.sh DATA OUT [GEN_MINUTES] [GAN_MINUTES]
#
# DATA holds portraits/train, portraits/valid (validation only) and general/train. The run folders go to
# $RUNS (default: a new temporary folder); OUT receives only what `python -m superres export` needs, one
# file per checkpoint (copied as soon as its stage ends), and records.tgz with the run records and logs.
# Stages follow `superres train` exactly; only batch size, workers and time differ.
#
# A lent GPU gets only the working tree (64 MiB in all), so DATA was a git-excluded folder in the repo holding
# ../shared/data's portraits/train re-encoded at <= 640 px and portraits/valid at 512 px (Pillow, Lanczos, JPEG
# q90 4:4:4) and general/train as it is (~50 MB); fastai and its pure-Python needs travelled as wheels.
set -uo pipefail
DATA=$1; OUT=$2; GEN_MIN=${3:-5}; GAN_MIN=${4:-1}
HERE=$(cd "$(dirname "$0")" && pwd)
export PYTHONPATH=$HERE${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
WORKERS=${WORKERS:-7}
RUNS=${RUNS:-$(mktemp -d)}
mkdir -p "$OUT" "$RUNS"

train_scale() {   # scale hr_size bs
  local s=$1 run=$RUNS/run_x$1
  local args=(--data "$DATA/portraits/train,$DATA/general/train" --valid "$DATA/portraits/valid" --run "$run"
              --scale "$s" --hr-size "$2" --bs "$3" --repeats "${REPEATS:-16}" --workers "$WORKERS" --loss weightfree
              --device "$DEVICE" --minutes-gen "$GEN_MIN" --epochs-critic 1 --minutes-gan "$GAN_MIN" ${EXTRA:-})
  $PY -m superres train "${args[@]}" --stages generator > "$OUT/x${s}_generator.log" 2>&1 \
    || { echo "x$s generator failed; retrying in fp32"; rm -rf "$run";
         $PY -m superres train "${args[@]}" --no-bf16 --stages generator >> "$OUT/x${s}_generator.log" 2>&1; }
  cp "$run/checkpoints/generator_faithful.pt" "$OUT/x${s}_faithful.pt" || return 1
  $PY -m superres train "${args[@]}" --stages generator,critic,gan > "$OUT/x${s}_gan.log" 2>&1
  cp "$run/checkpoints/generator_gan.pt" "$OUT/x${s}_gan.pt"
}

t0=$(date +%s)
train_scale 4 256 48 & p4=$!
train_scale 2 128 64 & p2=$!
wait $p4; r4=$?; wait $p2; r2=$?
# records and CSV logs of both runs in one small archive (the big checkpoints travel as separate files)
mv "$OUT"/x?_*.log "$RUNS"/ 2>/dev/null
tar -C "$RUNS" -czf "$OUT/records.tgz" --exclude=checkpoints . 2>/dev/null
echo "x4 rc=$r4 x2 rc=$r2 in $(( $(date +%s) - t0 )) s"; ls -la "$OUT"
