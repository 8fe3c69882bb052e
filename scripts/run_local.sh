#!/usr/bin/env bash
# fl on this machine with torchrun: one rank per GPU (or NPROC ranks on the CPU).
#
#   scripts/run_local.sh [hydra overrides]          e.g. scripts/run_local.sh data=mnist fl.rounds=50
#   NPROC=4 MAX_RESTARTS=2 scripts/run_local.sh strategy=fedprox
#
# Knobs: NPROC (ranks; default: the number of GPUs, else 2), MAX_RESTARTS (torchrun restarts
# after a crashed rank, default 1; the job resumes from its latest checkpoint), PYTHON
# (default: .venv/bin/python when it exists, else python), OMP_NUM_THREADS (default 1 per rank).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
NPROC=${NPROC:-$("$PY" -c 'import torch; print(torch.cuda.device_count() or 2)')}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1  # a fresh rendezvous store per restart (pytorch/pytorch#135712)
exec "$PY" -m fl.launch --standalone --nproc_per_node="$NPROC" --max-restarts="${MAX_RESTARTS:-1}" \
    train.py "$@"
