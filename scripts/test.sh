#!/usr/bin/env bash
# Installs what is missing, configures, builds and runs the whole test suite with CTest.
# Usage: scripts/test.sh [BUILD_DIR]   (default: build). Extra CMake options via L3C_CMAKE_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir="${1:-build}"

scripts/install_deps.sh

jobs=$(nproc)
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release ${L3C_CMAKE_ARGS:-}
cmake --build "$build_dir" -j "$jobs"
# Tests run one at a time: each uses both cores through OpenMP.
ctest --test-dir "$build_dir" --output-on-failure --timeout 600
