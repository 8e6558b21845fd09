# Shell helpers the scripts share (source it; it defines functions and sets nothing else):
#   l3c_setup [TARGET...]  installs missing dependencies and builds the targets (default: l3c) in $BUILD_DIR
#                          (default build), once per shell: a second call, or a script that calls another, reuses it;
#                          with L3C_BIN set (a built l3c, as the tests pass it) it builds nothing
#   l3c_bin                the path of the l3c binary: $L3C_BIN, else $BUILD_DIR/l3c
#   json_get FILE KEY...   prints the value at a path of keys in a JSON file (numbers and strings as they are,
#                          objects and lists as JSON); an absent key is an error naming the file and the path
#   json_last_line         reads a command's output on stdin and prints its last line, checked to be JSON (--json)
#   die MESSAGE            prints "error: MESSAGE" to stderr and exits 2
#   sanitized_build DIR TARGET...  installs clang and libFuzzer if missing, configures DIR as clang's build with
#                          L3C_FUZZ=ON (AddressSanitizer, UndefinedBehaviorSanitizer, the fuzz targets; no CUDA) and
#                          builds the targets: scripts/sanitize.sh and scripts/fuzz.sh share it
#   gpu_cmake_args DEPS_ROOT ARCH  the CMake options of the GPU check's build, one per line (see below)

die() {
  echo "error: $*" >&2
  exit 2
}

l3c_bin() {
  echo "${L3C_BIN:-${BUILD_DIR:-build}/l3c}"
}

l3c_setup() {
  local targets=("$@")
  [ ${#targets[@]} -gt 0 ] || targets=(l3c)
  local stamp="${BUILD_DIR:-build}:${targets[*]}"
  if [ "${L3C_SETUP_DONE:-}" = "$stamp" ]; then return 0; fi
  if [ -n "${L3C_BIN:-}" ]; then
    [ -x "$L3C_BIN" ] || die "L3C_BIN=$L3C_BIN is not an executable"
    return 0
  fi
  local root
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  "$root/scripts/install_deps.sh"
  cmake -S "$root" -B "${BUILD_DIR:-build}" -DCMAKE_BUILD_TYPE=Release ${L3C_CMAKE_ARGS:-} > /dev/null
  cmake --build "${BUILD_DIR:-build}" -j "$(nproc)" --target "${targets[@]}" > /dev/null
  export L3C_SETUP_DONE="$stamp"
}

json_get() {
  python3 - "$@" <<'PY'
import json, sys
path, keys = sys.argv[1], sys.argv[2:]
try:
    value = json.load(open(path))
except (OSError, ValueError) as e:
    sys.exit(f"error: {path}: {e}")
for key in keys:
    try:
        value = value[int(key)] if isinstance(value, list) else value[key]
    except (KeyError, IndexError, ValueError):
        sys.exit(f"error: {path}: no value at {'.'.join(keys)}")
print(json.dumps(value) if isinstance(value, (dict, list, bool)) or value is None else value)
PY
}

json_last_line() {
  python3 -c '
import json, sys
lines = [l for l in sys.stdin.read().splitlines() if l.strip()]
if not lines:
    sys.exit("error: the command printed nothing")
json.loads(lines[-1])
print(lines[-1])'
}

sanitized_build() {
  local dir="$1"
  shift
  local root
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  "$root/scripts/install_deps.sh" clang libclang-rt-14-dev libomp-14-dev
  cmake -S "$root" -B "$dir" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=clang++ -DL3C_FUZZ=ON -DL3C_CUDA=OFF \
    -DL3C_EMULATED_GPU_TESTS=OFF -DL3C_NATIVE=OFF ${L3C_CMAKE_ARGS:-} > /dev/null
  cmake --build "$dir" -j "$(nproc)" --target "$@"
}

# gpu_cmake_args DEPS_ROOT ARCH: the CMake options of the GPU check's build (scripts/gpu_deps.sh builds the carried
# binaries with them, scripts/gpu_check.sh builds from source with them where those do not start): the CUDA
# backend for ARCH only, the l3c binary and the real-GPU tests without their emulated twins, no MPI, no -march=native
# (the binaries may run on another CPU), and the packages unpacked under DEPS_ROOT (scripts/gpu_deps.sh) instead of
# the system's, when that folder is complete. NCCL_ROOT, when set, is where nccl.h and libnccl.so.2 are.
gpu_cmake_args() {
  local deps="$1" arch="$2"
  local args=(-DCMAKE_BUILD_TYPE=Release -DL3C_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" -DL3C_EMULATED_GPU_TESTS=OFF
              -DL3C_MPI=OFF -DL3C_NATIVE=OFF)
  if [ -f "$deps/.complete" ]; then
    args+=(-DCMAKE_PREFIX_PATH="$deps/usr" -DEigen3_DIR="$deps/usr/share/eigen3/cmake" -DCMAKE_IGNORE_PREFIX_PATH=/usr)
  fi
  if [ -n "${NCCL_ROOT:-}" ]; then
    args+=(-DNCCL_INCLUDE_DIR="$NCCL_ROOT/include" -DNCCL_LIBRARY="$(ls "$NCCL_ROOT"/lib/libnccl.so* | head -n 1)")
  fi
  printf '%s\n' "${args[@]}"
}
