#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU, the CUDA toolkit (nvcc, cuBLAS), CMake and a C++ compiler, and
# no package registry: builds l3c with the CUDA backend against the headers and libraries that
# scripts/gpu_deps.sh put in .gpu_deps/ (carry that folder along with the checkout), runs the GPU test suite
# (ctest -L cuda: every CUDA op against the CPU op, the whole model against the CPU), then the benchmarks
# (l3c bench on configs/gpu/: the 124M dense Llama at T = 1024 and its L3 variant, bf16 and fp32, and the
# iso-sparse MoE model in bf16; and the
# PyTorch baseline on the same model when python3 has torch: eager and torch.compile), and writes the logs and
# summary.md into OUT_DIR.
#
# Usage: scripts/gpu_check.sh OUT_DIR
# Environment: CUDA_ARCH (CMAKE_CUDA_ARCHITECTURES; default: the GPU's own, from nvidia-smi, else "80;90"),
#              BENCH_STEPS (10), SKIP_TORCH=1 (no PyTorch baseline), BUILD_DIR (build-gpu).
# Every step runs even when an earlier one failed (a build failure ends the run); summary.md says which failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: scripts/gpu_check.sh OUT_DIR}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
build="${BUILD_DIR:-build-gpu}"
steps="${BENCH_STEPS:-10}"
summary="$out/summary.md"
status=0

log() { echo "gpu_check: $*" | tee -a "$out/gpu_check.log"; }
section() { printf '\n## %s\n\n' "$1" >> "$summary"; }

{
  echo "# l3c GPU check"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
  echo "- host: $(uname -n), $(nproc) cores"
} > "$summary"

# --- the machine -----------------------------------------------------------------------------------------
if ! command -v nvidia-smi >/dev/null; then
  log "nvidia-smi not found: no NVIDIA driver here"
fi
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
gpu_name="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
compute_cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '.')"
nvcc --version > "$out/nvcc.txt" 2>&1 || log "nvcc not found"
echo "- GPU: ${gpu_name:-none found}; driver $(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)" >> "$summary"
echo "- nvcc: $(nvcc --version 2>/dev/null | tail -1)" >> "$summary"

# --- dependencies -----------------------------------------------------------------------------------------
deps="$(pwd)/.gpu_deps/root"
if [ ! -f "$deps/.complete" ] && [ -d .gpu_deps/debs ]; then  # carried as .deb files only: unpack them
  mkdir -p "$deps"
  for deb in .gpu_deps/debs/*.deb; do dpkg -x "$deb" "$deps"; done && touch "$deps/.complete"
fi
prefix_args=()
if [ -f "$deps/.complete" ]; then
  prefix_args=(-DCMAKE_PREFIX_PATH="$deps/usr" -DEigen3_DIR="$deps/usr/share/eigen3/cmake")
  export LD_LIBRARY_PATH="$deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  log "dependencies from $deps"
else
  log "no .gpu_deps folder (scripts/gpu_deps.sh makes one): using the system's packages"
fi

# --- build ------------------------------------------------------------------------------------------------
arch="${CUDA_ARCH:-${compute_cap:-80;90}}"
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
start=$(date +%s)
if cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DL3C_CUDA=ON \
     -DCMAKE_CUDA_ARCHITECTURES="$arch" "${prefix_args[@]}" > "$out/configure.log" 2>&1 &&
   cmake --build "$build" -j "$(nproc)" > "$out/build.log" 2>&1; then
  build_ok=1
else
  build_ok=0
  status=1
fi
build_seconds=$(( $(date +%s) - start ))
section "Build"
echo "CUDA architectures ${arch}; $( [ $build_ok = 1 ] && echo "built in ${build_seconds} s" || echo "**FAILED** after ${build_seconds} s: see configure.log, build.log")" >> "$summary"
if [ $build_ok = 0 ]; then
  log "build failed; see $out/configure.log and $out/build.log"
  tail -30 "$out/build.log" 2>/dev/null | sed 's/^/    /' >> "$summary"
  exit 1
fi
l3c="$build/l3c"
"$l3c" inspect configs/gpu/dense_124m.json > "$out/inspect_dense_124m.txt" 2>&1 || true

# --- GPU tests --------------------------------------------------------------------------------------------
section "GPU tests (ctest -L cuda)"
if ctest --test-dir "$build" -L cuda --output-on-failure --timeout 900 > "$out/ctest_cuda.log" 2>&1; then
  skipped=$(grep -c '\*\*\*Skipped' "$out/ctest_cuda.log")
  if [ "$skipped" -gt 0 ]; then
    status=1
    echo "**$skipped skipped**: the tests saw no GPU ($(grep -E 'tests passed' "$out/ctest_cuda.log"))" >> "$summary"
  else
    echo "all passed: $(grep -E 'tests passed' "$out/ctest_cuda.log")" >> "$summary"
  fi
else
  status=1
  echo "**FAILED**: $(grep -E 'tests passed|tests failed' "$out/ctest_cuda.log")" >> "$summary"
  grep -E '\(Failed\)|\(Skipped\)|Not Run' "$out/ctest_cuda.log" | sed 's/^/    /' >> "$summary"
fi

# --- benchmarks -------------------------------------------------------------------------------------------
section "Benchmarks (l3c bench: median of ${steps} steps after 2 warm-up steps; MFU against the GPU's bf16 dense peak)"
echo "| config | framework | precision | tokens/step | ms/step | tokens/s | MFU |" >> "$summary"
echo "| --- | --- | --- | --- | --- | --- | --- |" >> "$summary"
row_from_json() {  # config, framework, precision, log file (last line: l3c's or bench_torch.py's JSON)
  python3 - "$@" >> "$summary" <<'PY' || echo "| $1 | $2 | $3 | failed: see $(basename "$4") | | | |" >> "$summary"
import json, sys
config, framework, precision, path = sys.argv[1:5]
lines = [l for l in open(path) if l.startswith("{")]
j = json.loads(lines[-1])
mfu = j.get("mfu")
print(f"| {config} | {framework} | {precision} | {j['tokens_per_step']} | {1e3 * j['step_seconds']:.1f} | "
      f"{j['tokens_per_second']:.0f} | {'' if mfu is None else f'{100 * mfu:.1f}%'} |")
PY
}
bench() {  # name, config, precision, extra args...
  local name="$1" config="$2" precision="$3"
  shift 3
  local logfile="$out/bench_${name}_${precision}.log"
  if "$l3c" bench "$config" --device cuda --steps "$steps" --warmup 2 --set train.precision="$precision" "$@" --json \
       > "$logfile" 2>&1; then
    row_from_json "$name" l3c "$precision" "$logfile"
  else
    status=1
    echo "| $name | l3c | $precision | **failed**: $(grep -m1 'error' "$logfile" | cut -c1-120) | | | |" >> "$summary"
  fi
}
bench dense_124m configs/gpu/dense_124m.json bf16
bench dense_124m configs/gpu/dense_124m.json fp32
bench dense_124m_recompute configs/gpu/dense_124m.json bf16 --set train.recompute=all
bench l3_124m configs/gpu/l3_124m.json bf16
bench l3_124m configs/gpu/l3_124m.json fp32
bench moe_124m configs/gpu/moe_124m.json bf16

if [ "${SKIP_TORCH:-0}" != 1 ] && python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  for precision in bf16 fp32; do
    for mode in eager compile; do
      logfile="$out/torch_dense_124m_${precision}_${mode}.log"
      flags=(--device cuda --precision "$precision" --steps "$steps" --warmup 3)
      [ "$mode" = compile ] && flags+=(--compile)
      if timeout 900 python3 scripts/bench_torch.py configs/gpu/dense_124m.json "${flags[@]}" > "$logfile" 2>&1; then
        row_from_json dense_124m "pytorch $mode" "$precision" "$logfile"
      else
        echo "| dense_124m | pytorch $mode | $precision | failed: see $(basename "$logfile") | | | |" >> "$summary"
      fi
    done
  done
else
  echo >> "$summary"
  echo "PyTorch baseline skipped (SKIP_TORCH=1, or python3 has no torch with CUDA)." >> "$summary"
fi

section "Result"
if [ $status = 0 ]; then echo "everything passed" >> "$summary"; else echo "**something failed**: see above" >> "$summary"; fi
log "done ($( [ $status = 0 ] && echo ok || echo 'with failures')); summary: $summary"
cat "$summary"
exit $status
