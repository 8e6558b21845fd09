#!/usr/bin/env bash
# Ablation: one big L3 layer against several smaller ones with the same rows in all (2v in one layer, v in
# each of two, v/2 in each of four), each with its FFN width fitted to the dense model's active parameters.
# Environment: see scripts/reproduce/lib.sh (SCALE, SEEDS, JOBS, ...).
source "$(dirname "$0")/lib.sh"
repro_begin layers "one big L3 layer vs several smaller ones at equal total rows"
n="$(json_get "$(repro_config dense)" model n_layers)"
v="$(json_get "$(repro_config l3)" model l3 v)"
repro_model dense "$(repro_config dense)"
repro_model l3-1layer "$(repro_config l3)" "model.l3.after_layers=[$((n / 2 - 1))]" "model.l3.v=$((2 * v))"
repro_fit l3-1layer model.ffn_hidden dense
repro_model l3 "$(repro_config l3)"
repro_model l3-4layers "$(repro_config l3)" "model.l3.after_layers=[0,1,$((n / 2)),$((n - 2))]" \
  "model.l3.v=$((v / 2))"
repro_fit l3-4layers model.ffn_hidden dense
for name in l3-1layer l3 l3-4layers; do repro_match "$name" dense; done
repro_run
