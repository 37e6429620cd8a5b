#!/usr/bin/env bash
# Peer comparison: Kiln's eager MLP step against PyTorch eager on this
# machine. PyTorch goes into a throw-away virtual environment (not the repo).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${KN_PEER_VENV:-/tmp/kiln-peers}
if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q torch numpy
fi
kiln=$(build/bench/bench_train | grep '^{')
torch=$("$venv/bin/python" bench/peers/torch_mlp.py | grep '^{')
echo "$kiln"
echo "$torch"
for b in 64 256; do
    k=$(grep "mlp_step_b$b\"" <<<"$kiln" | sed 's/.*"us_per_step": *\([0-9.]*\).*/\1/')
    t=$(grep "torch_mlp_step_b$b\"" <<<"$torch" | sed 's/.*"us_per_step": *\([0-9.]*\).*/\1/')
    awk -v b="$b" -v k="$k" -v t="$t" 'BEGIN { printf "batch %s: kiln %.1f us, torch %.1f us, torch/kiln %.2f\n", b, k, t, t / k }'
done
