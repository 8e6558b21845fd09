# What every experiment script of scripts/reproduce/ shares: the scale, the data, the model list, the
# iso-parameter checks, training (restartable), evaluation and the report. An experiment script reads:
#
#   source "$(dirname "$0")/lib.sh"
#   repro_begin main "dense vs L3 vs iso-sparse MoE at equal active parameters"
#   repro_model dense "$(repro_config dense)"
#   repro_model l3    "$(repro_config l3)"
#   repro_model l3-uniform "$(repro_config l3)" model.l3.allocation.method=uniform
#   repro_match l3 dense          # active parameters within 2% (l3c inspect --match), checked before training
#   repro_run                     # prepare data, train, evaluate, report
#
# Environment:
#   SCALE   smoke (seconds: the test suite runs every script so), cpu (the CPU study: the 97 novels with an 8K
#           BPE; hours on 2 cores), paper (the paper's models on FineWeb-Edu: GPUs). Default cpu.
#   SEEDS   the seeds every model trains with (default "1"); a run's seed sets its initialisation and data order.
#   JOBS    runs trained at once (default: the cores at smoke and cpu scale, 1 at paper scale);
#   THREADS threads per run (default: cores / JOBS).
#   PHASES  which of "data train eval report" to do (default all four, in that order).
#   OUT     where runs and results go (default runs/reproduce/$SCALE): OUT/MODEL-sSEED/ is a run folder,
#           OUT/results/EXPERIMENT/ the experiment's results.md, results.json and plots.
#   DEVICE  train.device for every run (default: the config's).
#
# Restartable: a run whose folder holds model.safetensors is finished and not repeated; an unfinished one
# continues from its newest checkpoint (l3c train --resume auto); an evaluation whose output file exists is not
# repeated. A model is the same run in every experiment that names it the same way (the same name, config and
# overrides), so main.sh and allocation.sh share their LZW L3 runs; a name reused with another definition is
# an error.

set -euo pipefail
REPRO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=../lib.sh
source "$REPRO_ROOT/scripts/lib.sh"
cd "$REPRO_ROOT"

REPRO_NAMES=()
declare -A REPRO_CONFIG=() REPRO_SETS=() REPRO_INIT_FROM=()
REPRO_MATCHES=()

# repro_begin EXPERIMENT DESCRIPTION: reads the environment, checks it, names the data and configs of the scale.
repro_begin() {
  REPRO_EXPERIMENT="$1"
  REPRO_DESCRIPTION="$2"
  SCALE="${SCALE:-cpu}"
  case "$SCALE" in
    smoke)
      REPRO_CONFIGS=configs/smoke
      REPRO_TEXT="${REPRO_TEXT:-../shared/data/tinyshakespeare/input.txt}"
      REPRO_VOCAB=512
      REPRO_DATA=data/reproduce/shakespeare-512
      REPRO_TOKENIZER=data/reproduce/tokenizer-shakespeare-512
      REPRO_HELDOUT="${REPRO_HELDOUT:-../shared/data/heldout/ENG18961_Griffiths.txt}"
      REPRO_HELDOUT_MAX_BYTES="${REPRO_HELDOUT_MAX_BYTES:-20000}"
      REPRO_TASK_LIMIT="${REPRO_TASK_LIMIT:-8}"
      ;;
    cpu)
      REPRO_CONFIGS=configs/cpu
      REPRO_TEXT="${REPRO_TEXT:-../shared/data/novels}"
      REPRO_VOCAB=8192
      REPRO_DATA=data/reproduce/novels-8k
      REPRO_TOKENIZER=data/reproduce/tokenizer-novels-8k
      REPRO_HELDOUT="${REPRO_HELDOUT:-../shared/data/heldout}"
      # The first 100 KB of each of the 23 held-out novels (2.3 MB, about 600K tokens): minutes per model on a core.
      REPRO_HELDOUT_MAX_BYTES="${REPRO_HELDOUT_MAX_BYTES:-100000}"
      REPRO_TASK_LIMIT="${REPRO_TASK_LIMIT:-0}"
      ;;
    paper)
      REPRO_CONFIGS=configs/paper
      REPRO_TEXT="${REPRO_TEXT:-data/fineweb_edu/jsonl}"
      REPRO_VOCAB=180000
      REPRO_DATA=data/fineweb-edu
      REPRO_TOKENIZER=data/tokenizers/fineweb-edu-180k
      REPRO_HELDOUT="${REPRO_HELDOUT:-../shared/data/heldout}"
      REPRO_HELDOUT_MAX_BYTES="${REPRO_HELDOUT_MAX_BYTES:-0}"
      REPRO_TASK_LIMIT="${REPRO_TASK_LIMIT:-0}"
      ;;
    *) die "SCALE must be smoke, cpu or paper, got '$SCALE'" ;;
  esac
  SEEDS="${SEEDS:-1}"
  for seed in $SEEDS; do [[ "$seed" =~ ^[0-9]+$ ]] || die "SEEDS must be non-negative integers, got '$seed'"; done
  local cores
  cores="$(nproc)"
  if [ "$SCALE" = paper ]; then JOBS="${JOBS:-1}"; else JOBS="${JOBS:-$cores}"; fi
  [[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || die "JOBS must be a positive integer, got '$JOBS'"
  THREADS="${THREADS:-$(( cores / JOBS > 0 ? cores / JOBS : 1 ))}"
  [[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || die "THREADS must be a positive integer, got '$THREADS'"
  PHASES="${PHASES:-data train eval report}"
  for phase in $PHASES; do
    case "$phase" in data|train|eval|report) ;; *) die "PHASES: unknown phase '$phase' (data, train, eval, report)" ;; esac
  done
  OUT="${OUT:-runs/reproduce/$SCALE}"
  REPRO_RESULTS="$OUT/results/$REPRO_EXPERIMENT"
  if [ "$SCALE" = paper ] && [ ! -f "$REPRO_DATA/manifest.json" ]; then
    die "$REPRO_DATA holds no shards: the paper scale trains on FineWeb-Edu, which needs a download first:" \
      "python3 scripts/data/fineweb_edu.py --name sample-10BT --out $REPRO_TEXT (see the script), then" \
      "l3c tokenizer train --vocab-size 180000 --out $REPRO_TOKENIZER $REPRO_TEXT and" \
      "l3c prepare --tokenizer $REPRO_TOKENIZER --out $REPRO_DATA $REPRO_TEXT"
  fi
  [ "$SCALE" = paper ] || [ -e "$REPRO_TEXT" ] || die "$REPRO_TEXT: no such file or folder (the $SCALE scale trains on it)"
  [ -e "$REPRO_HELDOUT" ] || die "$REPRO_HELDOUT: no such file or folder (the held-out text)"
  mkdir -p "$OUT" "$REPRO_RESULTS"
  l3c_setup l3c
  echo "== $REPRO_EXPERIMENT ($SCALE): $REPRO_DESCRIPTION; seeds $SEEDS, $JOBS runs at once x $THREADS threads -> $OUT"
}

repro_phase() { [[ " $PHASES " == *" $1 "* ]]; }

# repro_config dense|l3|moe: the scale's config of that model (the paper scale names its files by size: the
# 800M-active models).
repro_config() {
  case "$SCALE" in
    paper) echo "$REPRO_CONFIGS/$1_800m.json" ;;
    *) echo "$REPRO_CONFIGS/$1.json" ;;
  esac
}

# repro_model NAME CONFIG [init_from=OTHER] [KEY=VALUE ...]: a model of the experiment, the config with --set
# overrides; init_from=OTHER starts it from the final checkpoint of model OTHER's run with the same seed
# (l3c train --init-from), so OTHER trains first.
repro_model() {
  local name="$1" config="$2"
  shift 2
  if [[ "${1:-}" == init_from=* ]]; then
    REPRO_INIT_FROM[$name]="${1#init_from=}"
    [ -n "${REPRO_CONFIG[${1#init_from=}]:-}" ] || die "model $name: init_from=${1#init_from=} names no model declared before it"
    shift
  fi
  [[ "$name" =~ ^[a-z0-9][a-z0-9._-]*$ ]] || die "model name '$name': lower-case letters, digits, '.', '_' and '-' only"
  [ -f "$config" ] || die "$config: no such config (model $name)"
  [ -z "${REPRO_CONFIG[$name]:-}" ] || die "model $name is declared twice"
  REPRO_NAMES+=("$name")
  REPRO_CONFIG[$name]="$config"
  local kv
  for kv in "$@"; do
    [[ "$kv" == *=* && "$kv" != *[[:space:]]* ]] || die "model $name: '$kv' is not KEY=VALUE without spaces"
  done
  REPRO_SETS[$name]="$*"
}

# repro_match NAME OTHER [total]: NAME's active parameters (and with "total" its total parameters: iso-sparse)
# must be within 2% of OTHER's; checked with l3c inspect --match before anything trains.
repro_match() { REPRO_MATCHES+=("$1:$2:${3:-}"); }

# repro_set_list NAME ARRAY: NAME's overrides as words, without globbing ("[0,1]" stays as written).
repro_set_list() {
  local -n out_list="$2"
  set -f
  out_list=(${REPRO_SETS[$1]})
  set +f
}

# The --set arguments of a model's run: its overrides, then the run's folder, seed, threads and device.
repro_sets() {
  local name="$1" seed="$2" kv list=()
  local -n out_args="$3"
  out_args=()
  repro_set_list "$name" list
  for kv in "${list[@]}"; do out_args+=(--set "$kv"); done
  out_args+=(--set "run.dir=$OUT/$name-s$seed" --set "train.seed=$seed" --set "train.threads=$THREADS")
  [ -n "${DEVICE:-}" ] && out_args+=(--set "train.device=$DEVICE")
  return 0
}

# The definition of a model (config file contents and overrides), recorded in its run folder so that a
# folder is never continued under another definition.
repro_definition() {
  local name="$1"
  printf '%s\n%s\n' "$(sha256sum < "${REPRO_CONFIG[$name]}" | cut -c1-16) ${REPRO_CONFIG[$name]}" \
    "${REPRO_SETS[$name]}${REPRO_INIT_FROM[$name]:+ init_from=${REPRO_INIT_FROM[$name]}}"
}

# repro_resolved_config NAME FILE: writes a config that extends NAME's config with NAME's overrides, for the
# commands that read a config file as written (inspect --match).
repro_resolved_config() {
  local list=()
  repro_set_list "$1" list
  python3 - "$(realpath "${REPRO_CONFIG[$1]}")" "${list[@]}" > "$2" <<'PY'
import json, sys
config = {"extends": sys.argv[1]}
for item in sys.argv[2:]:
    key, _, text = item.partition("=")
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
print(json.dumps(config, indent=1))
PY
}

# repro_active NAME: the active parameters per token of model NAME (l3c inspect).
repro_active() {
  local args=()
  repro_sets "$1" 1 args
  "$(l3c_bin)" inspect "${REPRO_CONFIG[$1]}" "${args[@]}" --json 2>/dev/null | json_last_line |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["active_params"])'
}

# repro_fit NAME KEY OTHER: sets the integer config KEY of model NAME (e.g. model.ffn_hidden) to the value that
# brings NAME's active parameters closest to OTHER's (active parameters are linear in such a size).
repro_fit() {
  local name="$1" key="$2" other="$3" target a0 a1 value sets="${REPRO_SETS[$1]}"
  target="$(repro_active "$other")"
  REPRO_SETS[$name]="$sets $key=64"; a0="$(repro_active "$name")"
  REPRO_SETS[$name]="$sets $key=128"; a1="$(repro_active "$name")"
  [ "$a1" != "$a0" ] || die "repro_fit: $key does not change the active parameters of $name"
  value="$(python3 -c "print(max(1, round(64 + 64 * ($target - $a0) / ($a1 - $a0))))")"
  REPRO_SETS[$name]="$sets $key=$value"
}

# The checks of repro_match: active parameters within 2% (and total parameters, for "total").
repro_check_matches() {
  local entry name other what line diff l3c
  l3c="$(l3c_bin)"
  for entry in "${REPRO_MATCHES[@]}"; do
    IFS=: read -r name other what <<< "$entry"
    local args=()
    repro_sets "$name" 1 args
    repro_resolved_config "$other" "$REPRO_RESULTS/.match-$other.json"
    local report
    report="$("$l3c" inspect "${REPRO_CONFIG[$name]}" "${args[@]}" --match "$REPRO_RESULTS/.match-$other.json" 2>&1)" ||
      die "l3c inspect ${REPRO_CONFIG[$name]} --match failed for $name vs $other: $(echo "$report" | tail -1)"
    for kind in active ${what:+total}; do
      line="$(echo "$report" | grep -E "^ +$kind ")"
      diff="$(echo "$line" | awk '{print $4}' | tr -d '%+-')"
      awk -v d="$diff" 'BEGIN { exit !(d <= 2.0) }' ||
        die "models $name and $other differ by $(echo "$line" | awk '{print $4}') in $kind parameters (more than 2%)"
      echo "   $name vs $other: $kind parameters $(echo "$line" | awk '{print $2, "vs", $3, "(" $4 ")"}')"
    done
  done
}

# --- data ---------------------------------------------------------------------------------------------------
repro_data() {
  local l3c
  l3c="$(l3c_bin)"
  if [ ! -f "$REPRO_TOKENIZER/encoder.json" ]; then
    echo "== data: a $REPRO_VOCAB-token BPE on $REPRO_TEXT -> $REPRO_TOKENIZER"
    rm -rf "$REPRO_TOKENIZER.tmp"
    "$l3c" tokenizer train --vocab-size "$REPRO_VOCAB" --out "$REPRO_TOKENIZER.tmp" "$REPRO_TEXT"
    mv "$REPRO_TOKENIZER.tmp" "$REPRO_TOKENIZER"
  fi
  if [ ! -f "$REPRO_DATA/manifest.json" ]; then
    echo "== data: $REPRO_TEXT -> $REPRO_DATA"
    rm -rf "$REPRO_DATA.tmp"
    "$l3c" prepare --tokenizer "$REPRO_TOKENIZER" --out "$REPRO_DATA.tmp" --val-fraction 0.04 --no-progress "$REPRO_TEXT"
    mv "$REPRO_DATA.tmp" "$REPRO_DATA"
  fi
}

# --- training -----------------------------------------------------------------------------------------------
repro_train_one() {
  local name="$1" seed="$2" run="$OUT/$1-s$2" args=() start=(--resume auto)
  repro_sets "$name" "$seed" args
  mkdir -p "$run"
  if [ -f "$run/definition.txt" ] && [ "$(cat "$run/definition.txt")" != "$(repro_definition "$name")" ]; then
    echo "error: $run was trained under another definition of model $name (see $run/definition.txt); move it aside" >&2
    return 2
  fi
  repro_definition "$name" > "$run/definition.txt"
  local from="${REPRO_INIT_FROM[$name]:-}"
  if [ -n "$from" ] && [ ! -d "$run/checkpoints" ]; then
    local latest
    latest="$(ls -d "$OUT/$from-s$seed"/checkpoints/step_* 2>/dev/null | sort | tail -n 1)"
    [ -n "$latest" ] || { echo "error: $name starts from $from (seed $seed), which has no checkpoint" >&2; return 2; }
    start=(--init-from "$latest")
  fi
  local command=("$(l3c_bin)" train "${REPRO_CONFIG[$name]}" "${args[@]}" "${start[@]}")
  echo "${command[*]}" >> "$run/commands.txt"
  "${command[@]}" >> "$run/train.log" 2>&1 || {
    echo "error: training $name (seed $seed) failed: the end of $run/train.log:" >&2
    tail -n 5 "$run/train.log" >&2
    return 1
  }
}

# Trains the given name:seed jobs, JOBS at a time.
repro_train_jobs() {
  local running=0 failed=0 job
  for job in "$@"; do
    if [ "$running" -ge "$JOBS" ]; then
      wait -n || failed=$((failed + 1))
      running=$((running - 1))
    fi
    echo "   $(date +%H:%M:%S) training ${job%%:*} seed ${job#*:} -> $OUT/${job%%:*}-s${job#*:}"
    repro_train_one "${job%%:*}" "${job#*:}" &
    running=$((running + 1))
  done
  while [ "$running" -gt 0 ]; do
    wait -n || failed=$((failed + 1))
    running=$((running - 1))
  done
  [ "$failed" -eq 0 ] || die "$failed training run(s) failed (their train.log says why)"
}

# Every model and seed without a finished run (RUN/model.safetensors), those started from another model's
# checkpoint after the others.
repro_train() {
  local name seed first=() second=()
  for seed in $SEEDS; do
    for name in "${REPRO_NAMES[@]}"; do
      if [ -f "$OUT/$name-s$seed/model.safetensors" ]; then
        echo "   $name seed $seed: trained"
      elif [ -n "${REPRO_INIT_FROM[$name]:-}" ]; then
        second+=("$name:$seed")
      else
        first+=("$name:$seed")
      fi
    done
  done
  repro_train_jobs "${first[@]}"
  repro_train_jobs "${second[@]}"
}

# --- evaluation ---------------------------------------------------------------------------------------------
# Held-out text (loss, perplexity, bits per byte), the zero-shot tasks and, where the experiment sets
# REPRO_LENS=1, the logit lens, in one l3c eval per run: RUN/eval.json (its last line). A run shared by several
# experiments is evaluated once, and again (with the lens) when an experiment wants the lens its evaluation lacks.
REPRO_TASKS="${REPRO_TASKS:-arc_easy,arc_challenge,piqa,winogrande,openbook_qa,copa,lambada}"
repro_eval() {
  local name seed run jobs=()
  for seed in $SEEDS; do
    for name in "${REPRO_NAMES[@]}"; do
      run="$OUT/$name-s$seed"
      [ -f "$run/model.safetensors" ] || die "$run is not trained (run the train phase first)"
      if [ -s "$run/eval.json" ]; then
        [ "${REPRO_LENS:-0}" = 1 ] || continue
        python3 -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1])).get("lens") else 1)' "$run/eval.json" &&
          continue
      fi
      jobs+=("$name:$seed")
    done
  done
  local running=0 failed=0 job
  for job in "${jobs[@]}"; do
    if [ "$running" -ge "$JOBS" ]; then wait -n || failed=$((failed + 1)); running=$((running - 1)); fi
    repro_eval_one "${job%%:*}" "${job#*:}" &
    running=$((running + 1))
  done
  while [ "$running" -gt 0 ]; do wait -n || failed=$((failed + 1)); running=$((running - 1)); done
  [ "$failed" -eq 0 ] || die "$failed evaluation(s) failed (their eval.log says why)"
}

repro_eval_one() {
  local run="$OUT/$1-s$2"
  local command=("$(l3c_bin)" eval --checkpoint "$run" --text "$REPRO_HELDOUT" --tasks "$REPRO_TASKS"
                 --threads "$THREADS" --json)
  [ "$REPRO_TASK_LIMIT" -gt 0 ] && command+=(--limit "$REPRO_TASK_LIMIT")
  [ "$REPRO_HELDOUT_MAX_BYTES" -gt 0 ] && command+=(--max-bytes "$REPRO_HELDOUT_MAX_BYTES")
  [ "${REPRO_LENS:-0}" = 1 ] && command+=(--lens)
  echo "   $(date +%H:%M:%S) evaluating $1 seed $2"
  echo "${command[*]}" >> "$run/commands.txt"
  local partial="$run/eval.json.$BASHPID.tmp"  # (two experiments may evaluate a shared run at once)
  if "${command[@]}" 2> "$run/eval.log" | json_last_line > "$partial"; then
    mv "$partial" "$run/eval.json"
  else
    rm -f "$partial"
    echo "error: evaluating $1 (seed $2) failed: $(tail -n 1 "$run/eval.log")" >&2
    return 1
  fi
}

# --- report -------------------------------------------------------------------------------------------------
# The experiment's results.md, results.json and plots in REPRO_RESULTS, from the run folders.
repro_report() {
  local spec="$REPRO_RESULTS/experiment.json" name models=() args=() counts
  for name in "${REPRO_NAMES[@]}"; do
    repro_sets "$name" 1 args
    counts="$("$(l3c_bin)" inspect "${REPRO_CONFIG[$name]}" "${args[@]}" --json 2>/dev/null | json_last_line)"
    models+=("$name" "${REPRO_CONFIG[$name]}" "${REPRO_SETS[$name]}" "${REPRO_INIT_FROM[$name]:-}" "$counts")
  done
  python3 - "$REPRO_EXPERIMENT" "$REPRO_DESCRIPTION" "$SCALE" "$SEEDS" "$OUT" "${REPRO_BASELINE:-${REPRO_NAMES[0]}}" \
      "${models[@]}" > "$spec" <<'PY'
import json, sys
experiment, description, scale, seeds, out, baseline, *rest = sys.argv[1:]
models = []
for i in range(0, len(rest), 5):
    counts = json.loads(rest[i + 4])
    models.append({"name": rest[i], "config": rest[i + 1], "sets": rest[i + 2].split(), "init_from": rest[i + 3] or None,
                   "active_params": counts["active_params"], "total_params": counts["total_params"]})
print(json.dumps({"experiment": experiment, "description": description, "scale": scale,
                  "seeds": [int(s) for s in seeds.split()], "out": out, "baseline": baseline, "models": models},
                 indent=1))
PY
  # Debian's python3 has numpy and matplotlib (scripts/install_deps.sh installs them).
  /usr/bin/python3 "$REPRO_ROOT/scripts/reproduce/report.py" "$spec" "$REPRO_RESULTS"
}

# repro_run: the phases the environment asks for.
repro_run() {
  if repro_phase data; then repro_data; fi
  repro_check_matches
  if repro_phase train; then echo "== train"; repro_train; fi
  if repro_phase eval; then echo "== eval"; repro_eval; fi
  if repro_phase report; then echo "== report"; repro_report; fi
  return 0
}
