#!/usr/bin/env bash
# Peer comparison on this machine: Kiln's eager MLP step against PyTorch
# eager, and Kiln's traced step against torch.compile. PyTorch goes into a
# throw-away virtual environment (not the repo).
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
# The traced step (bench_fn) against torch.compile (its first call compiles).
fn=$(build/bench/bench_fn | grep '"fn_mlp_step_b')
tc=$("$venv/bin/python" bench/peers/torch_mlp.py --compile | grep '^{')
for b in 64 256; do
    k=$(grep "fn_mlp_step_b$b\"" <<<"$fn" | sed 's/.*"traced_us": *\([0-9.]*\).*/\1/')
    t=$(grep "torch_compile_mlp_step_b$b\"" <<<"$tc" | sed 's/.*"us_per_step": *\([0-9.]*\).*/\1/')
    awk -v b="$b" -v k="$k" -v t="$t" 'BEGIN { printf "batch %s: kiln traced %.1f us, torch.compile %.1f us, torch.compile/kiln %.2f\n", b, k, t, t / k }'
done
