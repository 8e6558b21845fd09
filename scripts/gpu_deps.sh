#!/usr/bin/env bash
# Fills .gpu_deps/ (git-ignored) with what building l3c needs beyond a CUDA toolkit, CMake and a C++ compiler:
# the Debian packages of Eigen, nlohmann/json, spdlog, fmt and Catch2, downloaded here with `apt-get download`
# (no root needed) and unpacked with `dpkg -x` into .gpu_deps/root. scripts/gpu_check.sh builds against that
# folder on a GPU machine that has no package registry: carry .gpu_deps there with the checkout (about 20 MB).
# Usage: scripts/gpu_deps.sh            (again: does nothing when the folder is complete)
set -euo pipefail
cd "$(dirname "$0")/.."
deps=.gpu_deps
packages=(libeigen3-dev nlohmann-json3-dev libspdlog-dev libspdlog1.10 libfmt-dev libfmt9 catch2)

if [ -f "$deps/root/.complete" ]; then
  echo "gpu_deps: $deps/root is complete ($(du -sh "$deps" | cut -f1))"
  exit 0
fi
command -v apt-get >/dev/null || { echo "gpu_deps: error: apt-get not found (a Debian or Ubuntu machine is needed)" >&2; exit 2; }
rm -rf "$deps"
mkdir -p "$deps/debs" "$deps/root"
(cd "$deps/debs" && apt-get download "${packages[@]}")
for deb in "$deps"/debs/*.deb; do dpkg -x "$deb" "$deps/root"; done
# What the build uses: headers, CMake package files, the spdlog and fmt libraries; documentation is dropped.
rm -rf "$deps/root/usr/share/doc" "$deps/root/usr/share/man" "$deps/root/usr/share/lintian"
{
  echo "packages: ${packages[*]}"
  for deb in "$deps"/debs/*.deb; do dpkg-deb -f "$deb" Package Version | paste -sd' '; done
} > "$deps/root/MANIFEST"
touch "$deps/root/.complete"
echo "gpu_deps: $deps filled ($(du -sh "$deps" | cut -f1)): $(ls "$deps/debs" | tr '\n' ' ')"
