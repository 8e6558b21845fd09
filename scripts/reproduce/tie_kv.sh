#!/usr/bin/env bash
# Ablation: tying an L3 layer's keys and values (W_V = W_K, d_emb = d_model): half the table parameters per row.
# The paper: almost free. Environment: see scripts/reproduce/lib.sh (SCALE, SEEDS, JOBS, ...).
source "$(dirname "$0")/lib.sh"
repro_begin tie_kv "tied keys and values in the L3 tables"
d_model="$(json_get "$(repro_config dense)" model d_model)"
repro_model dense "$(repro_config dense)"
repro_model l3 "$(repro_config l3)"
repro_model l3-tied "$(repro_config l3)" model.l3.tie_kv=true "model.l3.d_emb=$d_model"
repro_fit l3-tied model.ffn_hidden dense
repro_match l3 dense
repro_match l3-tied dense
repro_run
