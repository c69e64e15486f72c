#!/usr/bin/env bash
# The GPU check in one command (bench/gpu_check.py says what it runs):
#   bash bench/gpu_check.sh               pip install requirements.txt + requirements-gpu.txt, then every part on
#                                         one GPU, about 8 minutes (--budget); table on stdout, JSON in bench/gpu_check.json
#   bash bench/gpu_check.sh --dry-run     nothing installed: every part at toy size on the CPU
#   bash bench/gpu_check.sh --no-install  the GPU check on what is installed
# Other options (--out, --budget, --peak-tflops, --tokenizer, --only, --keep) go to bench/gpu_check.py.
# Offline: pip reads its usual variables, e.g. PIP_NO_INDEX=1 PIP_FIND_LINKS=/path/to/wheels.
# The Python used: $PYTHON, else .venv/bin/python when present, else python3.
set -u
cd "$(dirname "$0")/.." || exit 2
python=${PYTHON:-}
if [ -z "$python" ]; then
    if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
install=--install
args=()
for arg in "$@"; do
    case "$arg" in
        --dry-run) install=""; args+=("$arg") ;;
        --no-install) install="" ;;
        *) args+=("$arg") ;;
    esac
done
echo "python: $python ($("$python" --version 2>&1))"
exec "$python" bench/gpu_check.py $install "${args[@]}"
