#!/usr/bin/env bash
# Ablation: the form of the L3 layer. MODEL.md's replacing form (h' = W_mix [z ; h], W_mix normal(0, 0.02)), the
# residual form (h' = h + W_mix [z ; h]), and the replacing form with W_mix's h-part initialised as the identity
# (mix_init identity): at d = 256 a normal(0, 0.02) W_mix shrinks the residual stream to about 0.3x at each L3
# layer, at the paper's d = 2048 to about 0.9x. Environment: see scripts/reproduce/lib.sh (SCALE, SEEDS, ...).
source "$(dirname "$0")/lib.sh"
repro_begin l3_form "replacing vs residual L3 layers, and W_mix's initialisation"
REPRO_LENS=1
repro_model dense "$(repro_config dense)"
repro_model l3 "$(repro_config l3)"
repro_model l3-residual "$(repro_config l3)" model.l3.residual=true
repro_model l3-mix-identity "$(repro_config l3)" model.l3.mix_init=identity
repro_model l3-residual-mix-identity "$(repro_config l3)" model.l3.residual=true model.l3.mix_init=identity
repro_match l3 dense
repro_run
