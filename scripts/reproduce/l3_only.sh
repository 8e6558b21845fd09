#!/usr/bin/env bash
# Open question of the paper: L3 layers added to a trained dense model, training only the L3 parameters. The
# dense model trains as in main.sh; then (a) the dense model trains on for the same number of steps again, and
# (b) the same trunk gets two fresh L3 layers and only they train (train.trainable = model.l3.). Both continue
# with a fresh schedule over the same windows in the same order (those of the first pass: the same seed), so
# they are compared like for like. Environment: see scripts/reproduce/lib.sh (SCALE, SEEDS, JOBS, ...).
source "$(dirname "$0")/lib.sh"
repro_begin l3_only "fresh L3 layers on a trained dense trunk, only the L3 parameters training"
ffn="$(json_get "$(repro_config dense)" model ffn_hidden)"
repro_model dense "$(repro_config dense)"
repro_model dense-continued "$(repro_config dense)" init_from=dense
repro_model dense-plus-l3 "$(repro_config l3)" init_from=dense "model.ffn_hidden=$ffn" \
  train.trainable=model.l3.
repro_run
