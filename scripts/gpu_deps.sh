#!/usr/bin/env bash
# Fills .gpu_deps/ (git-ignored), the one folder the GPU check carries to a GPU machine that has the CUDA toolkit,
# CMake and a C++ compiler but no package registry (scripts/gpu_check.sh; docs/benchmarks.md says how to run it):
#   .gpu_deps/root  the Debian packages of Eigen, nlohmann/json, spdlog, fmt and Catch2, downloaded here with
#                   `apt-get download` and unpacked with `dpkg -x` (headers, CMake package files, the spdlog and fmt
#                   libraries): what building l3c needs beyond the CUDA toolkit;
#   .gpu_deps/bin.tar.xz
#                   the l3c binary, the real-GPU test executables and the kernel ladders (dev/), built here against
#                   .gpu_deps/root (not the system's packages: the build shows that the folder suffices) for
#                   CUDA_ARCH (default 90, the H100/H200), stripped, with bin/MANIFEST (commit, architecture, date),
#                   in one solid xz archive: each executable links the same kernels, so the 60 MB of executables
#                   pack into about 5 MB. gpu_check.sh unpacks and runs them when they start there, and builds from
#                   source when they do not.
# The folder must stay under 60 MB (it travels with the checkout); the script fails when it does not.
# Usage: scripts/gpu_deps.sh [--no-binaries]   Environment: CUDA_ARCH (90), BUILD_DIR (build-gpu-deps).
# Run again after changing the code: the packages are kept, the binaries rebuilt.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
deps=.gpu_deps
packages=(libeigen3-dev nlohmann-json3-dev libspdlog-dev libspdlog1.10 libfmt-dev libfmt9 catch2)
binaries=1
case "${1:-}" in
  "") ;;
  --no-binaries) binaries=0 ;;
  *) die "usage: scripts/gpu_deps.sh [--no-binaries]" ;;
esac

if [ -f "$deps/root/.complete" ]; then
  echo "gpu_deps: $deps/root is complete ($(du -sh "$deps/root" | cut -f1))"
else
  command -v apt-get >/dev/null || die "apt-get not found (a Debian or Ubuntu machine is needed)"
  rm -rf "$deps"
  mkdir -p "$deps/debs" "$deps/root"
  (cd "$deps/debs" && apt-get download "${packages[@]}")
  for deb in "$deps"/debs/*.deb; do dpkg -x "$deb" "$deps/root"; done
  # What the build uses: headers, CMake package files, the spdlog and fmt libraries; documentation is dropped, and
  # so are the .deb files once unpacked.
  rm -rf "$deps/root/usr/share/doc" "$deps/root/usr/share/man" "$deps/root/usr/share/lintian"
  {
    echo "packages: ${packages[*]}"
    for deb in "$deps"/debs/*.deb; do dpkg-deb -f "$deb" Package Version | paste -sd' '; done
  } > "$deps/root/MANIFEST"
  rm -rf "$deps/debs"
  touch "$deps/root/.complete"
  echo "gpu_deps: $deps/root filled ($(du -sh "$deps/root" | cut -f1))"
fi

if [ "$binaries" = 1 ]; then
  command -v nvcc >/dev/null || die "nvcc not found: the carried binaries need the CUDA toolkit (or use --no-binaries)"
  command -v xz >/dev/null || die "xz not found: the carried binaries are packed with it (apt-get install xz-utils)"
  arch="${CUDA_ARCH:-90}"
  build="${BUILD_DIR:-build-gpu-deps}"
  mapfile -t cmake_args < <(gpu_cmake_args "$(pwd)/$deps/root" "$arch")
  echo "gpu_deps: building the GPU check's binaries for sm_$arch in $build"
  mkdir -p "$build"
  cmake -S . -B "$build" "${cmake_args[@]}" > "$build/configure.log" 2>&1 || {
    tail -n 20 "$build/configure.log" >&2
    die "configuring $build failed (the whole log: $build/configure.log)"
  }
  cmake --build "$build" -j "$(nproc)" --target gpu_check_binaries
  staging="$build/carried"
  rm -rf "$staging" "$deps/bin" "$deps/bin.tar.xz"
  mkdir -p "$staging/bin"
  cp "$build/l3c" "$build"/dev_* "$staging/bin/"
  find "$build/tests" -maxdepth 1 -type f -executable \( -name 'test_cuda_*' -o -name test_nccl \) \
    -exec cp {} "$staging/bin/" \;
  strip "$staging"/bin/*
  {
    echo "commit: $(git rev-parse HEAD)$(git diff --quiet HEAD -- src tools tests dev CMakeLists.txt || echo ' (with local changes)')"
    echo "cuda_arch: $arch"
    echo "nvcc: $(nvcc --version | tail -n 1)"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(. /etc/os-release && echo "$PRETTY_NAME")"
  } > "$staging/bin/MANIFEST"
  echo "gpu_deps: packing $(du -sm "$staging/bin" | cut -f1) MB of executables into $deps/bin.tar.xz"
  tar -C "$staging" -cf - bin | xz -6 -T 1 > "$deps/bin.tar.xz.partial"
  mv "$deps/bin.tar.xz.partial" "$deps/bin.tar.xz"
fi

size_mb=$(du -sm "$deps" | cut -f1)
echo "gpu_deps: $deps is ${size_mb} MB: $(ls "$deps" | tr '\n' ' ')"
[ "$size_mb" -le 60 ] || die "$deps is ${size_mb} MB, over the 60 MB that may travel with the checkout"
