#!/usr/bin/env bash
# One-shot training on a lent GPU: several `superres train` runs side by side (the GPU has room for all of them;
# the CPU cores are shared out among them for data loading), each for a fixed wall-clock budget.
#
#   bash Code/train_gpu.sh DATA OUT GEN_MINUTES GAN_MINUTES JOB...
#   JOB = NAME:SCALE[:more train flags]
#
#   e.g. bash Code/train_gpu.sh data out 5.5 1.5 x4:4 x2:2                          (v3: both scales from scratch)
#        bash Code/train_gpu.sh data out 2.5 4 'lat01:4:--lattice-weight 0.1 --init init/x4_faithful.pt --lr-gen 5e-4'
#        bash Code/train_gpu.sh data out 0 4.3 'ih03:4:--init init/x4_faithful.pt --epochs-gen 0 --minutes-gen 0
#             --minutes-polish 1 --adversarial-weight 0.3'
#                        (the shipped x4 strength-1 network, 2026-11-27, beside two other jobs; x2: 'x2ih01:2:...'
#                         with --init init/x2_faithful.pt, --minutes-gan 2.4 --minutes-polish 0.5, weight 0.1;
#                         the critic then saw the image and its high-pass and the lattice weight was 0.03, now the
#                         defaults)
#
# Environment: HR4/BS4 and HR2/BS2 (crop side and batch per scale; 256/48 and 128/64), REPEATS (16), WORKERS,
# DEVICE (cuda), PYTHON, RUNS. A CPU rehearsal with tiny settings:
#   DEVICE=cpu HR4=64 BS4=4 HR2=32 BS2=4 REPEATS=1 bash Code/train_gpu.sh tinydata /tmp/out 0.1 0.1 'x4:4:--degradation real'
#
# DATA holds portraits/train, portraits/valid (validation only) and general/train. The run folders go to
# $RUNS (default: a new temporary folder); OUT receives only what `python -m superres export` needs, one
# file per checkpoint (NAME_faithful.pt, NAME_gan.pt = the polished GAN generator, each copied as soon as its
# stage ends), and records.tgz with the run records and logs. Stages follow `superres train` exactly; only batch size, workers and time differ.
#
# A lent GPU gets only the working tree (64 MiB in all), so DATA was a git-excluded folder in the repo holding
# ../shared/data's portraits/train at <= 512 px (v3: 640; Pillow, Lanczos, JPEG q87 4:4:4), 16 of portraits/valid
# at 512 px (q90) and general/train's photos of >= 128 px re-encoded as JPEG q84 4:4:4 (25 MB in all); fastai
# and its pure-Python needs travelled as wheels (fastprogress 1.0.3: 1.1.x imports python-fasthtml, which the GPU
# image lacks; kornia and kornia-rs for --degradation real), and --init checkpoints with weights stored as fp16.
# At most 8 files come back from $OUT per call: keep the jobs to 3 (2 checkpoints each + records.tgz).
set -uo pipefail
[ $# -ge 5 ] || { echo "usage: bash Code/train_gpu.sh DATA OUT GEN_MINUTES GAN_MINUTES NAME:SCALE[:flags]..."; exit 2; }
DATA=$1; OUT=$2; GEN_MIN=$3; GAN_MIN=$4; shift 4
HERE=$(cd "$(dirname "$0")" && pwd)
export PYTHONPATH=$HERE${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
SHARE=$(( $(nproc) / $# - 1 ))   # cores per job, less its main process (none on a small machine)
WORKERS=${WORKERS:-$(( SHARE > 0 ? SHARE : 0 ))}
RUNS=${RUNS:-$(mktemp -d)}
mkdir -p "$OUT" "$RUNS"

train_job() {   # NAME SCALE [flags]
  local name=$1 s=$2 run=$RUNS/$1
  local hr bs; if [ "$s" = 4 ]; then hr=${HR4:-256}; bs=${BS4:-48}; else hr=${HR2:-128}; bs=${BS2:-64}; fi
  # shellcheck disable=SC2206
  local args=(--data "$DATA/portraits/train,$DATA/general/train" --valid "$DATA/portraits/valid" --run "$run"
              --scale "$s" --hr-size "$hr" --bs "$bs" --repeats "${REPEATS:-16}" --workers "$WORKERS" --loss weightfree
              --device "$DEVICE" --minutes-gen "$GEN_MIN" --epochs-critic 1 --minutes-gan "$GAN_MIN" ${3:-})
  $PY -m superres train "${args[@]}" --stages generator > "$RUNS/${name}_generator.log" 2>&1 \
    || { echo "$name generator failed; retrying in fp32"; rm -rf "$run";
         $PY -m superres train "${args[@]}" --no-bf16 --stages generator >> "$RUNS/${name}_generator.log" 2>&1; }
  cp "$run/checkpoints/generator_faithful.pt" "$OUT/${name}_faithful.pt" || return 1
  $PY -m superres train "${args[@]}" --stages generator,critic,gan,polish > "$RUNS/${name}_gan.log" 2>&1
  cp "$run/checkpoints/generator_polished.pt" "$OUT/${name}_gan.pt"   # the strength-1 end: GAN, then polish
}

t0=$(date +%s); pids=(); names=()
for job in "$@"; do
  IFS=: read -r name scale flags <<< "$job"
  train_job "$name" "$scale" "$flags" & pids+=($!); names+=("$name")
done
for i in "${!pids[@]}"; do wait "${pids[$i]}"; echo "${names[$i]} rc=$?"; done
# records and CSV logs of all runs in one small archive (the big checkpoints travel as separate files); the
# logs without fastai's progress bars, which are most of their bytes
for f in "$RUNS"/*.log; do tr '\r' '\n' < "$f" | grep -v -E "^(Epoch [0-9]+/|█? *\|)" > "$f.txt"; rm "$f"; done
tar -C "$RUNS" -czf "$OUT/records.tgz" --exclude=checkpoints . 2>/dev/null
echo "$# jobs in $(( $(date +%s) - t0 )) s"; ls -la "$OUT"
