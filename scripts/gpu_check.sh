#!/usr/bin/env bash
# The GPU check: one command, on a machine with an NVIDIA GPU, the CUDA toolkit, CMake and a C++ compiler but no
# package registry, that fits in 8 minutes. It needs the checkout and the folder .gpu_deps/ that
# scripts/gpu_deps.sh fills here (packages and prebuilt binaries, under 60 MB). In order, each part bounded in time:
#   machine     nvidia-smi, nvcc, compute-sanitizer: what is there
#   binaries    the carried .gpu_deps/bin.tar.xz, unpacked, when they start there and were built for this GPU,
#               else a build from source (l3c and the real-GPU tests only, for this GPU's architecture) against
#               .gpu_deps/root
#   tests       every real-GPU test executable (each CUDA op against the CPU op, the whole model against the CPU,
#               bf16 gradient accumulation, resume, inference, evaluation, NCCL)
#   bench       l3c bench of the 124M dense, L3 and MoE configs in bf16 (3 steps of 8 micro-batches after 1 warm-up)
#   sanitizer   compute-sanitizer memcheck, racecheck, synccheck and initcheck over the op tests
#   ladders     the kernel ladders of dev/ (each CUDA version of an op checked against the CPU and timed) at the
#               124M config's shapes
#   torch       the PyTorch baseline of the dense config (scripts/bench_torch.py), when time is left
# A part that runs out of its time is stopped and reported so; the later parts still run. Writes OUT_DIR/summary.md
# (printed last), OUT_DIR/logs/ and OUT_DIR/logs.tar.gz (the logs in one file); exits 1 when a part failed.
#
# Usage: scripts/gpu_check.sh OUT_DIR
# Environment: GPU_CHECK_SECONDS (total time, default 450), GPU_CHECK_BUILD=1 (build even when carried binaries
#              start), CUDA_ARCH (the build's architecture; default the GPU's), BUILD_DIR (build-gpu-check).
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
out="${1:-}"
[ -n "$out" ] || die "usage: scripts/gpu_check.sh OUT_DIR"
mkdir -p "$out/logs" || die "cannot create $out/logs"
out="$(cd "$out" && pwd)"
logs="$out/logs"
budget="${GPU_CHECK_SECONDS:-450}"
[[ "$budget" =~ ^[1-9][0-9]*$ ]] || die "GPU_CHECK_SECONDS must be a positive number of seconds, got '$budget'"
build="${BUILD_DIR:-build-gpu-check}"
deps="$(pwd)/.gpu_deps"
status=0
rows=()  # summary rows: "part | result | seconds | detail"

# bounded SECONDS: the smaller of SECONDS and what is left of the budget (at least 1)
bounded() {
  local left=$(( budget - SECONDS ))
  [ "$left" -lt "$1" ] && echo $(( left > 1 ? left : 1 )) || echo "$1"
}
row() { rows+=("| $1 | $2 | $3 | $4 |"); }
fail_row() { status=1; row "$1" "**$2**" "$3" "$4"; }
# run_bounded LOG SECONDS COMMAND...: runs the command with a time limit, output to LOG; returns its status (124:
# stopped at the limit)
run_bounded() {
  local log="$1" seconds="$2"
  shift 2
  timeout --kill-after=5 "$seconds" "$@" > "$log" 2>&1
}

# --- machine ----------------------------------------------------------------------------------------------------
gpu_name="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)"
compute_cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d '.')"
driver="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1)"
nvidia-smi > "$logs/nvidia-smi.txt" 2>&1
nvcc --version > "$logs/nvcc.txt" 2>&1
sanitizer="$(command -v compute-sanitizer || ls /usr/local/cuda*/compute-sanitizer/compute-sanitizer 2>/dev/null | head -n 1)"
[ -n "$sanitizer" ] && "$sanitizer" --version > "$logs/compute-sanitizer.txt" 2>&1
# NCCL from the Python wheel (nvidia-nccl-*), where the CUDA toolkit has none.
NCCL_ROOT="${NCCL_ROOT:-$(python3 -c 'import nvidia.nccl as m; print(m.__path__[0])' 2>/dev/null)}"
export NCCL_ROOT
# The carried binaries' libraries: spdlog and fmt from .gpu_deps, the CUDA runtime and cuBLAS from the toolkit, NCCL.
lib_path="$deps/root/usr/lib/x86_64-linux-gnu:/usr/local/cuda/lib64:/usr/local/cuda/lib${NCCL_ROOT:+:$NCCL_ROOT/lib}"
export LD_LIBRARY_PATH="$lib_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ -n "$gpu_name" ]; then
  row machine ok 0 "$gpu_name (sm_$compute_cap), driver $driver; $(nvcc --version 2>/dev/null | tail -n 1 | cut -d, -f2-); $(nproc) cores; compute-sanitizer ${sanitizer:+found}${sanitizer:-missing}; NCCL ${NCCL_ROOT:-from the toolkit}"
else
  fail_row machine "no GPU" 0 "nvidia-smi found no GPU: the GPU parts below report skipped or failed"
fi

# --- binaries ---------------------------------------------------------------------------------------------------
part_start=$SECONDS
bin=""
# unpack_carried ARCHIVE DIR: the carried executables into DIR/bin, with xz where the machine has it, else Python's
unpack_carried() {
  rm -rf "$2" && mkdir -p "$2" || return 1
  if command -v xz > /dev/null; then
    tar -C "$2" -xJf "$1"
  else
    python3 -c 'import sys, tarfile
safe = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}
tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2], **safe)' "$1" "$2"
  fi
}
carried="$build/carried"
if [ "${GPU_CHECK_BUILD:-0}" != 1 ] && [ -f "$deps/bin.tar.xz" ]; then
  if ! unpack_carried "$deps/bin.tar.xz" "$carried" > "$logs/carried.log" 2>&1 || [ ! -x "$carried/bin/l3c" ]; then
    echo "unpacking $deps/bin.tar.xz into $carried failed: building" >> "$logs/carried.log"
  else
    carried_arch="$(sed -n 's/^cuda_arch: //p' "$carried/bin/MANIFEST" 2>/dev/null)"
    if [ -n "$compute_cap" ] && [ "$carried_arch" != "$compute_cap" ]; then
      echo "carried binaries are for sm_$carried_arch, this GPU is sm_$compute_cap: building" >> "$logs/carried.log"
    elif "$carried/bin/l3c" inspect configs/gpu/dense_124m.json >> "$logs/carried.log" 2>&1 &&
         # (Catch2 exits with the number of tests it lists: the listing itself says whether the executable started)
         { "$carried/bin/test_cuda_ops" --list-test-names-only >> "$logs/carried.log" 2>&1; grep -q "^cuda: " "$logs/carried.log"; }; then
      bin="$carried/bin"
      row binaries "carried" $(( SECONDS - part_start )) "$(sed -n 's/^commit: //p' "$bin/MANIFEST" | cut -c1-12), sm_$carried_arch, built $(sed -n 's/^built: //p' "$bin/MANIFEST")"
    fi
  fi
fi
if [ -z "$bin" ]; then
  arch="${CUDA_ARCH:-${compute_cap:-90}}"
  mapfile -t cmake_args < <(gpu_cmake_args "$deps/root" "$arch")
  generator=()
  command -v ninja > /dev/null && generator=(-G Ninja)
  if run_bounded "$logs/configure.log" "$(bounded 60)" cmake -S . -B "$build" "${generator[@]}" "${cmake_args[@]}" &&
     run_bounded "$logs/build.log" "$(bounded 300)" cmake --build "$build" -j "$(nproc)" --target gpu_check_binaries; then
    bin="$build"
    mkdir -p "$build/check-bin"
    for f in "$build/l3c" "$build"/dev_* "$build"/tests/test_nccl \
             $(find "$build/tests" -maxdepth 1 -type f -executable -name 'test_cuda_*'); do
      ln -sf "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$build/check-bin/"
    done
    bin="$build/check-bin"
    row binaries "built" $(( SECONDS - part_start )) "sm_$arch from source ($(grep -c . "$logs/build.log") build lines)"
  else
    fail_row binaries "build failed" $(( SECONDS - part_start )) "see logs/configure.log, logs/build.log: $(tail -n 1 "$logs/build.log" 2>/dev/null | cut -c1-100)"
  fi
fi

# --- tests ------------------------------------------------------------------------------------------------------
# A Catch2 executable's result: the summary line ("All tests passed (...)" or "test cases: ...").
catch_summary() { grep -E "^All tests passed|^test cases:" "$1" | tail -n 1 | tr -s ' '; }
if [ -n "$bin" ]; then
  for test in "$bin"/test_cuda_* "$bin"/test_nccl; do
    name="$(basename "$test")"
    part_start=$SECONDS
    L3C_TEST_SOURCE_DIR="$(pwd)" OMP_NUM_THREADS=8 run_bounded "$logs/$name.log" "$(bounded 90)" "$test"
    code=$?
    case "$code" in
      0) row "test $name" passed $(( SECONDS - part_start )) "$(catch_summary "$logs/$name.log")" ;;
      4) fail_row "test $name" skipped $(( SECONDS - part_start )) "$(grep -m 1 -i "skip\|no gpu\|needs" "$logs/$name.log" | cut -c1-120)" ;;
      124|137) fail_row "test $name" "timed out" $(( SECONDS - part_start )) "stopped at the time limit: $(catch_summary "$logs/$name.log")" ;;
      *) fail_row "test $name" "FAILED ($code)" $(( SECONDS - part_start )) "$(catch_summary "$logs/$name.log"); first: $(grep -m 1 -B 2 "FAILED" "$logs/$name.log" | head -n 1 | cut -c1-100)" ;;
    esac
  done
fi

# --- benchmarks -------------------------------------------------------------------------------------------------
if [ -n "$bin" ]; then
  for model in dense l3 moe; do
    config="configs/gpu/${model}_124m.json"
    log="$logs/bench_${model}_124m_bf16.log"
    part_start=$SECONDS
    run_bounded "$log" "$(bounded 75)" "$bin/l3c" bench "$config" --device cuda --steps 3 --warmup 1 \
      --set train.precision=bf16 --set train.batch_tokens=131072 --json
    code=$?
    if [ "$code" = 0 ] && line="$(json_last_line < "$log" 2>/dev/null)"; then
      summary="$(python3 -c '
import json, sys
j = json.loads(sys.argv[1]); mfu = j.get("mfu")
tokens_per_second, step_ms, tokens = j["tokens_per_second"], 1e3 * j["step_seconds"], j["tokens_per_step"]
mfu_text = "?" if mfu is None else "%.1f%%" % (100 * mfu)
print(f"{tokens_per_second:.0f} tokens/s, {step_ms:.0f} ms/step of {tokens} tokens, MFU {mfu_text}")' "$line")"
      row "bench ${model}_124m bf16" ok $(( SECONDS - part_start )) "$summary"
    elif [ "$code" = 124 ] || [ "$code" = 137 ]; then
      fail_row "bench ${model}_124m bf16" "timed out" $(( SECONDS - part_start )) "see logs/$(basename "$log")"
    else
      fail_row "bench ${model}_124m bf16" "FAILED ($code)" $(( SECONDS - part_start )) "$(grep -m 1 -i "error" "$log" | cut -c1-120)"
    fi
  done
fi

# --- compute-sanitizer ------------------------------------------------------------------------------------------
if [ -n "$bin" ] && [ -n "$sanitizer" ]; then
  for tool in memcheck racecheck synccheck initcheck; do
    log="$logs/sanitizer_$tool.log"
    part_start=$SECONDS
    # The out-of-memory test asks for more than the GPU has, on purpose: not for the sanitizer.
    L3C_TEST_SOURCE_DIR="$(pwd)" run_bounded "$log" "$(bounded 45)" "$sanitizer" --tool "$tool" --error-exitcode 99 \
      "$bin/test_cuda_ops" "~*running out of GPU memory*"
    code=$?
    errors="$(grep -m 1 "ERROR SUMMARY" "$log" | sed 's/.*ERROR SUMMARY: //')"
    case "$code" in
      0) row "sanitizer $tool" clean $(( SECONDS - part_start )) "${errors:-0 errors}; $(catch_summary "$log")" ;;
      124|137) row "sanitizer $tool" "stopped at the limit" $(( SECONDS - part_start )) "no error reported before: $(grep -c "^-----" "$log") test lines" ;;
      *) fail_row "sanitizer $tool" "FOUND ($code)" $(( SECONDS - part_start )) "${errors:-see log}; first: $(grep -m 1 "=========" "$log" | cut -c1-120)" ;;
    esac
  done
elif [ -n "$bin" ]; then
  fail_row sanitizer missing 0 "compute-sanitizer not found"
fi

# --- kernel ladders ---------------------------------------------------------------------------------------------
# Each prints one line per version (ms per call, TFLOP/s, errors against the CPU); exit 1 when an error is too large.
declare -A ladder_args=(
  [dev_attention]="--batch 8 --seq 1024 --heads 12 --kv-heads 12 --head-dim 64"  # configs/gpu/dense_124m.json
  [dev_l3]="--positions 8192 --vocab 50304 --v 262144 --k 64 --d 768 --d-emb 384"  # configs/gpu/l3_124m.json
  [dev_classifier]="--rows 8192 --dim 768 --warmup 1 --iters 5"  # the same micro-batch; V = 50257 and 180K
  [dev_moe]="--tokens 16384 --experts 21 --top-k 2 --in 768 --out 1175"  # configs/gpu/moe_124m.json, gate/up
)
if [ -n "$bin" ]; then
  for ladder in "$bin"/dev_*; do
    [ -x "$ladder" ] || continue
    name="$(basename "$ladder")"
    log="$logs/ladder_$name.log"
    part_start=$SECONDS
    read -r -a args <<< "${ladder_args[$name]:-}"
    run_bounded "$log" "$(bounded 40)" "$ladder" "${args[@]}"
    code=$?
    case "$code" in
      0) row "ladder $name" ok $(( SECONDS - part_start )) "$(grep -v '^#' "$log" | grep . | tr '\n' ';' | tr -s ' ' | cut -c1-400)" ;;
      124|137) fail_row "ladder $name" "timed out" $(( SECONDS - part_start )) "see logs/$(basename "$log")" ;;
      *) fail_row "ladder $name" "FAILED ($code)" $(( SECONDS - part_start )) "$(tail -n 2 "$log" | tr '\n' ' ' | cut -c1-200)" ;;
    esac
  done
fi

# --- the PyTorch baseline, with the time left --------------------------------------------------------------------
if ! python3 -c "import torch; assert torch.cuda.is_available()" 2> /dev/null; then
  row "torch dense_124m bf16" "not run" 0 "no PyTorch with CUDA here"
elif [ $(( budget - SECONDS )) -lt 60 ]; then
  row "torch dense_124m bf16" "not run" 0 "less than a minute of the budget left"
else
  log="$logs/torch_dense_124m_bf16.log"
  part_start=$SECONDS
  if run_bounded "$log" "$(bounded 90)" python3 scripts/bench_torch.py configs/gpu/dense_124m.json --device cuda \
       --precision bf16 --steps 3 --warmup 1 --batch-tokens 131072 && line="$(json_last_line < "$log" 2>/dev/null)"; then
    row "torch dense_124m bf16" ok $(( SECONDS - part_start )) "$(python3 -c '
import json, sys
tokens_per_second = json.loads(sys.argv[1])["tokens_per_second"]
print(f"{tokens_per_second:.0f} tokens/s (eager PyTorch, same config)")' "$line")"
  else
    row "torch dense_124m bf16" "not run" $(( SECONDS - part_start )) "see logs/$(basename "$log")"
  fi
fi

# --- summary ----------------------------------------------------------------------------------------------------
{
  echo "# l3c GPU check"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ); commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); ${SECONDS} s of a ${budget} s budget"
  echo
  echo "| part | result | seconds | detail |"
  echo "| --- | --- | --- | --- |"
  printf '%s\n' "${rows[@]}"
  echo
  [ "$status" = 0 ] && echo "Everything passed." || echo "Something failed or was skipped: see the rows in bold and logs/."
} > "$out/summary.md"
tar -czf "$out/logs.tar.gz" -C "$out" logs
cat "$out/summary.md"
exit "$status"
