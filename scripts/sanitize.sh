#!/usr/bin/env bash
# The fast part of the test suite (CTest label "fast") under AddressSanitizer and UndefinedBehaviorSanitizer.
# Usage: scripts/sanitize.sh [BUILD_DIR]   (default: build-sanitize)
# The build is clang's with L3C_FUZZ=ON (which implies L3C_SANITIZE=ON), so that scripts/fuzz.sh reuses it; the CUDA
# backend and the emulated GPU tests are off (the emulation runs under ASan separately: docs/design.md). Any
# sanitizer report ends the process that made it, so the test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
build_dir="${1:-build-sanitize}"
sanitized_build "$build_dir" fast_tests
# ASan's leak checker is off: the trainer keeps its arenas to the end of the process by design.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
ctest --test-dir "$build_dir" -L fast --output-on-failure --timeout 600
