#!/usr/bin/env bash
# Ablation: k, the most rows one token may own, at the same table size v. The paper: k = 512 costs little
# against an unbounded k. Here k takes the smallest value the table allows (v / V: every token owns that many rows,
# the uniform allocation), 1/4, 1x and 8x the scale's k (8x is effectively unbounded: no token reaches it). Active parameters are not matched: l3c inspect counts k rows of each table as active, an upper
# bound that grows with k although the compute per token does not.
# Environment: see scripts/reproduce/lib.sh (SCALE, SEEDS, JOBS, ...).
source "$(dirname "$0")/lib.sh"
repro_begin k "the most rows per token, k"
k="$(json_get "$(repro_config l3)" model l3 k)"
v="$(json_get "$(repro_config l3)" model l3 v)"
vocab="$(json_get "$(repro_config dense)" model vocab_size)"
k_min=$(( (v + vocab - 1) / vocab ))
repro_model dense "$(repro_config dense)"
repro_model "l3-k$k_min" "$(repro_config l3)" "model.l3.k=$k_min"
if [ $((k / 4)) -gt "$k_min" ]; then repro_model "l3-k$((k / 4))" "$(repro_config l3)" "model.l3.k=$((k / 4))"; fi
repro_model l3 "$(repro_config l3)"
repro_model "l3-k$((k * 8))" "$(repro_config l3)" "model.l3.k=$((k * 8))"
repro_run
