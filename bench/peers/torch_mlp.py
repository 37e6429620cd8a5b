"""PyTorch reference for bench_train and bench_fn: the same MLP step
(784-128-10, cross-entropy, Adam), microseconds per step at batch 64 and
256; eager, or with --compile under torch.compile (and its first call)."""
import json
import os
import sys
import time

import torch

torch.set_num_threads(int(os.environ.get("KN_NUM_THREADS", os.cpu_count())))
torch.manual_seed(0)


def run(batch, iters):
    model = torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 784)
    y = torch.randint(0, 10, (batch,))

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    name, first = "torch", 0.0
    if "--compile" in sys.argv:
        name, step = "torch_compile", torch.compile(step)
        t0 = time.perf_counter()
        step()
        first = time.perf_counter() - t0
    for _ in range(20):
        step()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    us = (time.perf_counter() - t0) / iters * 1e6
    print(f"{name} mlp train step, batch {batch}: {us:.1f} us/step" + (f", first call {first:.2f} s" if first else ""))
    print(json.dumps({"bench": f"{name}_mlp_step_b{batch}", "us_per_step": round(us, 2), "first_call_s": round(first, 3)}))


run(64, 1000)
run(256, 500)
