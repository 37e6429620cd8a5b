#!/usr/bin/env bash
# Checks that clang vectorizes every f32 elementwise loop of eager/elementwise.c
# (at least <8 x float>) and that none calls libm: the eager kernels and the
# JIT's bitcode both rely on the formulas in core/scalar.h inlining as vectors.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
ll=$(mktemp --suffix=.ll)
trap 'rm -f "$ll"' EXIT
clang-19 -std=c17 -O3 -march=native -Wno-invalid-feature-combination -ffp-contract=off -D_GNU_SOURCE \
    -I"$src/include" -S -emit-llvm "$src/eager/elementwise.c" -o "$ll"
fail=0 n=0
for fn in $(grep -o '^define internal void @[a-z_]*_f32(' "$ll" | sed 's/.*@\(.*\)(/\1/'); do
    body=$(awk "/^define internal void @${fn}\\(/,/^}/" "$ll")
    width=$(grep -o '<[0-9]* x float>' <<<"$body" | grep -o '[0-9]*' | sort -n | tail -1 || true)
    calls=$(grep -c 'call [a-z ]*float @\(exp\|log\|tanh\|sin\|cos\|erf\|pow\)f\?(' <<<"$body" || true)
    n=$((n + 1))
    if [[ -z $width || $width -lt 8 || $calls -ne 0 ]]; then
        echo "not vectorized: $fn (widest <${width:-1} x float>, $calls libm calls)"
        fail=1
    fi
done
((n > 20)) || { echo "check_vectorized: found only $n f32 loops"; exit 1; }
((fail == 0)) && echo "check_vectorized: all $n f32 elementwise loops vectorize, no libm calls"
exit $fail
