#!/usr/bin/env bash
# The reproduction scripts at SCALE=smoke, end to end (CTest runs it once per script), and their refusals of bad
# input. Usage: tests/reproduce_smoke.sh L3C_BINARY OUT_DIR SCRIPT|bad_input
# SCRIPT runs with OUT=OUT_DIR (shared by the scripts, so a model two scripts name trains once), then its
# results.md, results.json and plots are checked: every model of the experiment in the table with its figures,
# every plot a readable PNG.
set -euo pipefail
l3c="$(realpath "$1")" out="$2" what="$3"
cd "$(dirname "$0")/.."
export L3C_BIN="$l3c" SCALE=smoke OUT="$out" JOBS=2 THREADS=1

if [ "$what" != bad_input ]; then
  bash "scripts/reproduce/$what" > "$out.$what.log" 2>&1 || { tail -n 30 "$out.$what.log"; exit 1; }
  experiment="${what%.sh}"
  /usr/bin/python3 - "$out/results/$experiment" <<'PY'
import json, os, sys
import matplotlib.image
results = sys.argv[1]
data = json.load(open(os.path.join(results, "results.json")))
table = open(os.path.join(results, "results.md")).read()
models = [m["name"] for m in data["experiment"]["models"]]
assert len(models) >= 2, models
assert not data["missing"], data["missing"]
for row in data["models"]:
    assert f"| {row['model']} |" in table, f"{row['model']} missing from results.md"
    loss = row["final_val_loss"][0]
    assert loss is not None and 0 < loss < 20, (row["model"], loss)
    bpb = row["heldout_bits_per_byte"][0]
    assert bpb is not None and 0 < bpb < 20, (row["model"], "bits per byte", bpb)
    average = row["zero_shot_average"][0]
    assert average is not None and 0 <= average <= 1, (row["model"], "zero-shot average", average)
    assert row["active_params"] > 0 and row["total_params"] >= row["active_params"]
for run, figures in data["runs"].items():
    assert any(" train " in c for c in figures["commands"]), f"{run}: no training command recorded"
    assert any(" eval " in c for c in figures["commands"]), f"{run}: no evaluation command recorded"
assert "val_loss.png" in data["plots"] and "final.png" in data["plots"], data["plots"]
for plot in data["plots"]:
    image = matplotlib.image.imread(os.path.join(results, plot))
    assert image.shape[0] > 100 and image.shape[1] > 100, (plot, image.shape)
print(f"{results}: {len(models)} models, plots {', '.join(data['plots'])}")
PY
  exit 0
fi

# Bad input: each ends with one error line and exit code 2.
expect_error() {  # expect_error PATTERN COMMAND...
  local pattern="$1" status=0 output
  shift
  output="$("$@" 2>&1)" || status=$?
  if [ "$status" -ne 2 ] || ! grep -q -- "$pattern" <<< "$output"; then
    echo "expected exit 2 and '$pattern' from: $*; got exit $status:"
    echo "$output" | tail -n 5
    exit 1
  fi
}
expect_error "SCALE must be smoke, cpu or paper, got 'huge'" env SCALE=huge bash scripts/reproduce/main.sh
expect_error "no such file or folder" env REPRO_TEXT=/nonexistent/novels bash scripts/reproduce/main.sh
expect_error "SEEDS must be non-negative integers" env SEEDS="1 x" bash scripts/reproduce/main.sh
expect_error "unknown phase 'fly'" env PHASES="data fly" bash scripts/reproduce/main.sh
expect_error "holds no shards" env SCALE=paper bash scripts/reproduce/main.sh
# An experiment whose models do not have equal active parameters is refused before anything trains.
unequal="$(mktemp -d)/unequal.sh"
cat > "$unequal" <<SCRIPT
source "$PWD/scripts/reproduce/lib.sh"
repro_begin unequal "a mismatched pair"
repro_model dense "\$(repro_config dense)"
repro_model wide "\$(repro_config dense)" model.ffn_hidden=200
repro_match wide dense
repro_run
SCRIPT
expect_error "differ by .* in active parameters (more than 2%)" env PHASES="train" bash "$unequal"
[ ! -d "$out/wide-s1" ] || { echo "a refused experiment trained a model"; exit 1; }
echo "bad input: every case refused with exit 2"
