#!/bin/bash
# Multi-node DDP training under SLURM: one task per GPU, Lightning reads the ranks from SLURM's variables
# (SLURMEnvironment: SLURM_PROCID, SLURM_LOCALID, SLURM_NODEID, SLURM_NTASKS).
#   sbatch scripts/slurm_multinode.sh data=shards data.root=s3://bucket/imagenet-shards data.batch_size=96
# Extra arguments are mbtasks overrides. Change --nodes / --ntasks-per-node / --gres together: Lightning
# refuses a run whose trainer.devices x trainer.num_nodes differs from SLURM's task count.
# The run dir must be on a file system every node sees (checkpoints are written by rank 0, read by all on resume).
#SBATCH --job-name=mbtasks
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --gres=gpu:4
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

NODES=${SLURM_JOB_NUM_NODES:-2}
GPUS=${SLURM_NTASKS_PER_NODE:-4}
RUN_DIR=${RUN_DIR:-outputs/multinode/${SLURM_JOB_ID:-local}}
# Effective batch = data.batch_size x GPUS x NODES; mbtasks does not scale the LR: give optimizer.lr for it.
srun python -m mbtasks trainer=ddp trainer.accelerator=gpu trainer.devices="$GPUS" trainer.num_nodes="$NODES" \
    data.num_workers="$(( ${SLURM_CPUS_PER_TASK:-8} - 1 ))" hydra.run.dir="$RUN_DIR" "$@"
