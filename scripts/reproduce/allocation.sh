#!/usr/bin/env bash
# Ablation: how the L3 rows are allocated to tokens. LZW (MODEL.md Algorithm 1, the paper's), uniform (the same
# number of rows for every token) and unigram (rows by token frequency), with the dense model for the gain.
# Environment: see scripts/reproduce/lib.sh (SCALE, SEEDS, JOBS, ...).
source "$(dirname "$0")/lib.sh"
repro_begin allocation "L3 row allocation: LZW vs uniform vs unigram"
repro_model dense "$(repro_config dense)"
repro_model l3 "$(repro_config l3)"
repro_model l3-uniform "$(repro_config l3)" model.l3.allocation.method=uniform
repro_model l3-unigram "$(repro_config l3)" model.l3.allocation.method=unigram
repro_match l3 dense
repro_run
