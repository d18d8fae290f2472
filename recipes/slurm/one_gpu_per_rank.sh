#!/bin/bash
# Runs its arguments with this rank's GPU only. The launcher (accelerate launch / torchrun) exports LOCAL_RANK per
# process but leaves every GPU visible to every process, so a vLLM engine built in each rank would otherwise land on
# GPU 0 of its node (the transformers policy and PRM place themselves on cuda:$LOCAL_RANK, and follow this too).
# Use with `accelerate launch --no_python recipes/slurm/one_gpu_per_rank.sh python recipes/build_dataset.py ...`
# (docs/scaleout.md).
export CUDA_VISIBLE_DEVICES=${LOCAL_RANK:?run me under accelerate launch or torchrun}
exec "$@"
