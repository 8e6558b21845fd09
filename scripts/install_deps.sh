#!/usr/bin/env bash
# Installs the Debian packages the build, the tests and the reference scripts need, if any is missing.
# Usage: scripts/install_deps.sh [PACKAGE...]   (more Debian packages to install with them, e.g. clang for fuzzing)
set -euo pipefail
packages=(cmake g++ make libeigen3-dev nlohmann-json3-dev libspdlog-dev libfmt-dev catch2 python3-torch python3-numpy
          python3-matplotlib  # the reproduction reports' plots (scripts/reproduce/report.py)
          libopenmpi-dev openmpi-bin  # Open MPI: data parallelism across processes (src/dist)
          "$@")
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The Python safetensors package, with which the tests check that our weight files load elsewhere, and the
# reference tokenizers (tiktoken, Hugging Face tokenizers) that the tokenizer tests load our trained files with.
if ! python3 -c "import safetensors, numpy, tiktoken, tokenizers" 2>/dev/null; then
  echo "installing: safetensors numpy tiktoken tokenizers (pip, for $(command -v python3))"
  python3 -m pip install -q safetensors numpy tiktoken tokenizers 2>/dev/null \
    || python3 -m pip install -q --break-system-packages safetensors numpy tiktoken tokenizers
fi

# Hugging Face transformers for the export check (tests/test_checkpoint.cpp, scripts/hf_logits_check.py): a
# version that runs on Debian's torch 1.13, installed into the ignored .cache/python-hf (run with
# PYTHONPATH=.cache/python-hf /usr/bin/python3). Optional: without it that one test reports skipped.
hf_dir="$(cd "$(dirname "$0")/.." && pwd)/.cache/python-hf"
if ! PYTHONPATH="$hf_dir" /usr/bin/python3 -c "import transformers, torch" 2>/dev/null; then
  echo "installing: transformers 4.45.2 into $hf_dir (pip, for /usr/bin/python3)"
  if ! /usr/bin/python3 -m pip install -q --root-user-action=ignore --target "$hf_dir" "transformers==4.45.2" "numpy<2"; then
    echo "warning: transformers could not be installed; the Hugging Face export check will be skipped"
  fi
fi
