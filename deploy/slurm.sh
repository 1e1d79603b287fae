#!/bin/bash
# A kd-harness study on a Slurm cluster: one setup job builds the shared artifacts (tokens,
# the fine-tuned teacher, its logits) once, then a job array of workers, one GPU each,
# shares the study through one database. Workers never wait on the teacher's build lock
# with a GPU idle, and a preempted worker's trial is queued again at once (SIGTERM).
#
#   STORAGE=postgresql://user@db-host/kd N_TRIALS=200 WORKERS=8 bash deploy/slurm.sh submit
#   bash deploy/slurm.sh             # outside Slurm: set up, then one worker, here
#
# Environment (read by every role):
#   STUDY       study file (default studies/default.yaml)
#   STORAGE     a storage every node reaches: postgresql://, mysql+pymysql://, redis://
#               (required to submit; default here the journal file runs/optuna.journal)
#   N_TRIALS    the study's total of finished trials, shared by all workers (default 50)
#   WORKERS     array size when submitting (default 4)
#   EXTRA       more flags for python -m harness.study, e.g. "--wandb offline"
#   KD_HARNESS_CACHE  the artifact cache, on a filesystem every node shares (default
#               ./.kd-cache); WANDB_API_KEY for online W&B logging
#   SBATCH_ARGS more sbatch flags (partition, account, time) for both jobs
#SBATCH --job-name=kd-harness
#SBATCH --gpus=1
#SBATCH --cpus-per-task=8
#SBATCH --output=kd-%x-%A_%a.log
set -euo pipefail

STUDY=${STUDY:-studies/default.yaml}
N_TRIALS=${N_TRIALS:-50}
WORKERS=${WORKERS:-4}
EXTRA=${EXTRA:-}
export KD_HARNESS_CACHE=${KD_HARNESS_CACHE:-$PWD/.kd-cache}

role=${1:-local}
if [ "$role" = submit ]; then
    : "${STORAGE:?set STORAGE to a database URL every node reaches}"
fi
STORAGE=${STORAGE:-journal:runs/optuna.journal}
# EXTRA is split into flags on purpose.
# shellcheck disable=SC2206
study=(python -m harness.study --study "$STUDY" --storage "$STORAGE" --n-trials "$N_TRIALS"
       $EXTRA)

case "$role" in
    submit)
        export STUDY N_TRIALS EXTRA STORAGE
        # shellcheck disable=SC2086
        setup=$(sbatch --parsable ${SBATCH_ARGS:-} --job-name=kd-prepare "$0" prepare)
        # shellcheck disable=SC2086
        sbatch ${SBATCH_ARGS:-} --job-name=kd-worker --dependency="afterok:$setup" \
            --array="1-$WORKERS" "$0" worker
        ;;
    prepare)
        "${study[@]}" --prepare-only
        ;;
    worker)
        # exec: Slurm's SIGTERM (preemption, scancel) reaches Python, which records the
        # trial failed, queues it again and exits with 143 within the 30 s grace period.
        exec "${study[@]}" --workers 1
        ;;
    local)
        "${study[@]}" --prepare-only
        exec "${study[@]}" --workers 1
        ;;
    *)
        echo "usage: bash deploy/slurm.sh [submit|prepare|worker|local]" >&2
        exit 2
        ;;
esac
