#!/usr/bin/env bash
# Ablation: k, the most rows one token may own, at the same table size v. The paper: k = 512 costs little
# against an unbounded k. Here k takes 1/8, 1/4, 1x and 8x the scale's k (8x is effectively unbounded: no token
# reaches it). Active parameters are not matched: l3c inspect counts k rows of each table as active, an upper
# bound that grows with k although the compute per token does not.
# Environment: see scripts/reproduce/lib.sh (SCALE, SEEDS, JOBS, ...).
source "$(dirname "$0")/lib.sh"
repro_begin k "the most rows per token, k"
k="$(json_get "$(repro_config l3)" model l3 k)"
repro_model dense "$(repro_config dense)"
for factor in 8 4; do repro_model "l3-k$((k / factor))" "$(repro_config l3)" "model.l3.k=$((k / factor))"; done
repro_model l3 "$(repro_config l3)"
repro_model "l3-k$((k * 8))" "$(repro_config l3)" "model.l3.k=$((k * 8))"
repro_run
