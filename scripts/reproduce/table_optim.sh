#!/usr/bin/env bash
# Why L3 wins or not, the optimizer side: each table row gets gradient only from the positions of its token, so
# its updates are rarer than a dense weight's, while decoupled weight decay shrinks every row at every step. The
# L3 model with the tables' learning rate x4 (train.table_lr_scale), without weight decay on the tables
# (train.table_weight_decay = 0), and both. Environment: see scripts/reproduce/lib.sh (SCALE, SEEDS, JOBS, ...).
source "$(dirname "$0")/lib.sh"
repro_begin table_optim "the L3 tables' learning rate and weight decay"
repro_model dense "$(repro_config dense)"
repro_model l3 "$(repro_config l3)"
repro_model l3-table-lr4 "$(repro_config l3)" train.table_lr_scale=4
repro_model l3-table-nodecay "$(repro_config l3)" train.table_weight_decay=0
repro_model l3-table-lr4-nodecay "$(repro_config l3)" train.table_lr_scale=4 train.table_weight_decay=0
repro_match l3 dense
repro_run
