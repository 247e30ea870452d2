#!/bin/bash
# Multi-node DDP without a scheduler: run this on every machine, the same command, with its own NODE_RANK.
# Lightning's LightningEnvironment reads MASTER_ADDR / MASTER_PORT / NODE_RANK and starts one process per device.
#   node 0:  MASTER_ADDR=10.0.0.1 NODE_RANK=0 NUM_NODES=2 GPUS=4 scripts/multinode_env.sh data.root=/data/imagenet
#   node 1:  MASTER_ADDR=10.0.0.1 NODE_RANK=1 NUM_NODES=2 GPUS=4 scripts/multinode_env.sh data.root=/data/imagenet
# torchrun works too (TorchElasticEnvironment), the same on every node:
#   torchrun --nnodes 2 --nproc-per-node 4 --node-rank $NODE_RANK --master-addr 10.0.0.1 --master-port 29500 \
#       -m mbtasks trainer=ddp trainer.devices=4 trainer.num_nodes=2 hydra.run.dir=/shared/run1 ...
# Give every node the same hydra.run.dir on a shared file system (rank 0 writes it; all ranks read it on resume).
set -euo pipefail
: "${MASTER_ADDR:?the address of node 0}" "${NODE_RANK:?0 on the first machine, 1, 2 ... on the others}"
export MASTER_ADDR NODE_RANK MASTER_PORT=${MASTER_PORT:-29500}
NUM_NODES=${NUM_NODES:-2}
GPUS=${GPUS:-1}
RUN_DIR=${RUN_DIR:-outputs/multinode/run}
"${PYTHON:-python}" -m mbtasks trainer=ddp trainer.devices="$GPUS" trainer.num_nodes="$NUM_NODES" hydra.run.dir="$RUN_DIR" "$@"
