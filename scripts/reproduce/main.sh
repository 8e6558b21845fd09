#!/usr/bin/env bash
# The paper's main comparison: a dense model, the same model with two L3 layers, and an MoE model that is
# iso-sparse with the L3 model (the same active and total parameters), all at equal active parameters per token,
# trained on the same tokens in the same order. Environment: see scripts/reproduce/lib.sh (SCALE, SEEDS, JOBS, ...).
source "$(dirname "$0")/lib.sh"
repro_begin main "dense vs L3 vs iso-sparse MoE at equal active parameters"
repro_model dense "$(repro_config dense)"
repro_model l3 "$(repro_config l3)"
repro_model moe "$(repro_config moe)"
repro_match l3 dense
repro_match moe dense
repro_match moe l3
repro_run
