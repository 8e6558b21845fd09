#!/usr/bin/env bash
# Ablation: where the two L3 layers sit. The paper: middle layers are best (too early lacks context, too late
# leaves no depth to use the lookup). Early (after the first two decoder layers), the main placement, middle and
# late (after the last two). The lens (REPRO_LENS) shows where each model's prediction forms.
# Environment: see scripts/reproduce/lib.sh (SCALE, SEEDS, JOBS, ...).
source "$(dirname "$0")/lib.sh"
repro_begin placement "where the L3 layers sit in the stack"
REPRO_LENS=1
n="$(json_get "$(repro_config dense)" model n_layers)"
repro_model dense "$(repro_config dense)"
repro_model l3-early "$(repro_config l3)" "model.l3.after_layers=[0,1]"
repro_model l3 "$(repro_config l3)"
repro_model l3-middle "$(repro_config l3)" "model.l3.after_layers=[$((n / 2 - 1)),$((n / 2))]"
repro_model l3-late "$(repro_config l3)" "model.l3.after_layers=[$((n - 2)),$((n - 1))]"
for name in l3-early l3 l3-middle l3-late; do repro_match "$name" dense; done
repro_run
