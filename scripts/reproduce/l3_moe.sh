#!/usr/bin/env bash
# Open question of the paper: L3 layers and MoE FFNs in one model. The L3 model with every FFN an MoE of 8
# experts (top-2, expert width fitted to the dense model's active parameters), next to dense, L3 and MoE.
# Environment: see scripts/reproduce/lib.sh (SCALE, SEEDS, JOBS, ...).
source "$(dirname "$0")/lib.sh"
repro_begin l3_moe "L3 layers and MoE FFNs in one model"
repro_model dense "$(repro_config dense)"
repro_model l3 "$(repro_config l3)"
repro_model moe "$(repro_config moe)"
repro_model l3-moe "$(repro_config l3)" 'model.moe.layers="all"' model.moe.experts=8 model.moe.top_k=2 \
  model.moe.expert_hidden=64
repro_fit l3-moe model.moe.expert_hidden dense
for name in l3 moe l3-moe; do repro_match "$name" dense; done
repro_run
