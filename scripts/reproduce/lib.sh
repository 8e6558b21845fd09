# What every experiment script of scripts/reproduce/ shares: the scale, the data, the model list, the
# iso-parameter checks, training (restartable), evaluation and the report. An experiment script reads:
#
#   source "$(dirname "$0")/lib.sh"
#   repro_begin main "dense vs L3 vs iso-sparse MoE at equal active parameters"
#   repro_model dense "$REPRO_CONFIGS/dense.json"
#   repro_model l3    "$REPRO_CONFIGS/l3.json"
#   repro_model l3-uniform "$REPRO_CONFIGS/l3.json" model.l3.allocation.method=uniform
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
declare -A REPRO_CONFIG=() REPRO_SETS=()
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
      REPRO_TASK_LIMIT="${REPRO_TASK_LIMIT:-8}"
      ;;
    cpu)
      REPRO_CONFIGS=configs/cpu
      REPRO_TEXT="${REPRO_TEXT:-../shared/data/novels}"
      REPRO_VOCAB=8192
      REPRO_DATA=data/reproduce/novels-8k
      REPRO_TOKENIZER=data/reproduce/tokenizer-novels-8k
      REPRO_HELDOUT="${REPRO_HELDOUT:-../shared/data/heldout}"
      REPRO_TASK_LIMIT="${REPRO_TASK_LIMIT:-0}"
      ;;
    paper)
      REPRO_CONFIGS=configs/paper
      REPRO_TEXT="${REPRO_TEXT:-data/fineweb_edu/jsonl}"
      REPRO_VOCAB=180000
      REPRO_DATA=data/reproduce/fineweb-edu-180k
      REPRO_TOKENIZER=data/reproduce/tokenizer-fineweb-edu-180k
      REPRO_HELDOUT="${REPRO_HELDOUT:-../shared/data/heldout}"
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
  [ -e "$REPRO_TEXT" ] || die "$REPRO_TEXT: no such file or folder (the $SCALE scale trains on it)"
  [ -e "$REPRO_HELDOUT" ] || die "$REPRO_HELDOUT: no such file or folder (the held-out text)"
  mkdir -p "$OUT" "$REPRO_RESULTS"
  echo "== $REPRO_EXPERIMENT ($SCALE): $REPRO_DESCRIPTION; seeds $SEEDS, $JOBS runs at once x $THREADS threads -> $OUT"
}

repro_phase() { [[ " $PHASES " == *" $1 "* ]]; }

# repro_model NAME CONFIG [KEY=VALUE ...]: a model of the experiment, the config with --set overrides.
repro_model() {
  local name="$1" config="$2"
  shift 2
  [[ "$name" =~ ^[a-z0-9][a-z0-9._-]*$ ]] || die "model name '$name': lower-case letters, digits, '.', '_' and '-' only"
  [ -f "$config" ] || die "$config: no such config (model $name)"
  [ -z "${REPRO_CONFIG[$name]:-}" ] || die "model $name is declared twice"
  REPRO_NAMES+=("$name")
  REPRO_CONFIG[$name]="$config"
  REPRO_SETS[$name]="$*"
}

# repro_match NAME OTHER: NAME's active parameters must be within 2% of OTHER's (checked before training).
repro_match() { REPRO_MATCHES+=("$1:$2"); }

# The --set arguments of a model's run: its overrides, then the run's folder, seed, threads and device.
repro_sets() {
  local name="$1" seed="$2" kv
  local -n out_args="$3"
  out_args=()
  for kv in ${REPRO_SETS[$name]}; do out_args+=(--set "$kv"); done
  out_args+=(--set "run.dir=$OUT/$name-s$seed" --set "train.seed=$seed" --set "train.threads=$THREADS")
  [ -n "${DEVICE:-}" ] && out_args+=(--set "train.device=$DEVICE")
  return 0
}

# The definition of a model (config file contents and overrides), recorded in its run folder so that a
# folder is never continued under another definition.
repro_definition() {
  local name="$1"
  printf '%s\n%s\n' "$(sha256sum < "${REPRO_CONFIG[$name]}" | cut -c1-16) ${REPRO_CONFIG[$name]}" "${REPRO_SETS[$name]}"
}

repro_check_matches() {
  local pair name other line diff l3c
  l3c="$(l3c_bin)"
  for pair in "${REPRO_MATCHES[@]}"; do
    name="${pair%%:*}" other="${pair#*:}"
    local args=() other_args=()
    repro_sets "$name" 1 args
    repro_sets "$other" 1 other_args
    # inspect --match compares against a config file as written, so the other model's overrides go into a
    # temporary config that extends its config.
    local resolved="$REPRO_RESULTS/.match-$other.json"
    python3 - "$(realpath "${REPRO_CONFIG[$other]}")" ${REPRO_SETS[$other]} > "$resolved" <<'PY'
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
    line="$("$l3c" inspect "${REPRO_CONFIG[$name]}" "${args[@]}" --match "$resolved" 2>&1 | grep -E '^ +active ')" ||
      die "l3c inspect ${REPRO_CONFIG[$name]} --match failed for $name vs $other"
    diff="$(echo "$line" | awk '{print $4}' | tr -d '%+-')"
    if ! awk -v d="$diff" 'BEGIN { exit !(d <= 2.0) }'; then
      die "models $name and $other differ by $(echo "$line" | awk '{print $4}') in active parameters (more than 2%): $line"
    fi
    echo "   $name vs $other: active parameters $(echo "$line" | awk '{print $2, "vs", $3, "(" $4 ")"}')"
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
  local name="$1" seed="$2" run="$OUT/$1-s$2" args=()
  repro_sets "$name" "$seed" args
  mkdir -p "$run"
  if [ -f "$run/definition.txt" ] && [ "$(cat "$run/definition.txt")" != "$(repro_definition "$name")" ]; then
    echo "error: $run was trained under another definition of model $name (see $run/definition.txt); move it aside" >&2
    return 2
  fi
  repro_definition "$name" > "$run/definition.txt"
  "$(l3c_bin)" train "${REPRO_CONFIG[$name]}" "${args[@]}" --resume auto >> "$run/train.log" 2>&1 || {
    echo "error: training $name (seed $seed) failed: the end of $run/train.log:" >&2
    tail -n 5 "$run/train.log" >&2
    return 1
  }
}

repro_train() {
  local name seed pending=() running=0 failed=0
  for seed in $SEEDS; do
    for name in "${REPRO_NAMES[@]}"; do
      if [ -f "$OUT/$name-s$seed/model.safetensors" ]; then
        echo "   $name seed $seed: trained"
      else
        pending+=("$name:$seed")
      fi
    done
  done
  for job in "${pending[@]}"; do
    if [ "$running" -ge "$JOBS" ]; then
      wait -n || failed=$((failed + 1))
      running=$((running - 1))
    fi
    echo "   $(date +%H:%M:%S) training ${job%%:*} seed ${job#*:} -> $OUT/${job%%:*}-s${job#*:} (log: train.log)"
    repro_train_one "${job%%:*}" "${job#*:}" &
    running=$((running + 1))
  done
  while [ "$running" -gt 0 ]; do
    wait -n || failed=$((failed + 1))
    running=$((running - 1))
  done
  [ "$failed" -eq 0 ] || die "$failed training run(s) failed"
}

# repro_run: the phases the environment asks for.
repro_run() {
  l3c_setup l3c
  repro_phase data && repro_data
  repro_check_matches
  repro_phase train && { echo "== train"; repro_train; }
  if repro_phase eval && declare -F repro_eval > /dev/null; then echo "== eval"; repro_eval; fi
  if repro_phase report && declare -F repro_report > /dev/null; then echo "== report"; repro_report; fi
  return 0
}
