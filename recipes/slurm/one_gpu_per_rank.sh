#!/bin/bash
# Runs its arguments with this rank's GPU only. The launcher (accelerate launch / torchrun) exports LOCAL_RANK per
# process but leaves every GPU visible to every process, so an engine built in each rank (a vLLM engine, a PRM)
# would otherwise land on GPU 0 of its node. Use with `accelerate launch --no_python recipes/slurm/one_gpu_per_rank.sh
# python recipes/build_dataset.py ...` (docs/scaleout.md).
export CUDA_VISIBLE_DEVICES=${LOCAL_RANK:?run me under accelerate launch or torchrun}
exec "$@"
