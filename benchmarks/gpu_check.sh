#!/usr/bin/env bash
# The GPU check (issue 14): one command, one table.
#
#   bash benchmarks/gpu_check.sh            # on one GPU: MAE ViT-L/16 and ViT-B/16 pretraining and ViT-L/16
#                                           # fine-tuning, bf16, eager and compiled (under 8 minutes on an H100/H200)
#   bash benchmarks/gpu_check.sh --smoke    # on a CPU: the same code paths at toy size (what CI runs)
#
# Any other option goes to benchmarks/gpu_check.py (--shard-set DIR, --workers N, --json FILE, --no-compile, ...;
# see `python benchmarks/gpu_check.py --help`). Without --shard-set it generates its data from the sample fixtures.
# PYTHON picks the interpreter (default: the checkout's .venv, else python3).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; else python="python3"; fi
fi
cd "$root"
exec "$python" "$here/gpu_check.py" "$@"
