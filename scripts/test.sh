#!/usr/bin/env bash
# Installs what is missing, configures, builds everything and runs the whole test suite with CTest.
# Usage: scripts/test.sh [BUILD_DIR]   (default: build). Extra CMake options via L3C_CMAKE_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
build_dir="${1:-build}"

unset L3C_BIN  # the suite needs its own build of everything, not a given binary
BUILD_DIR="$build_dir" l3c_setup all
# Tests run one at a time: each uses both cores through OpenMP.
ctest --test-dir "$build_dir" --output-on-failure --timeout 600
