"""The data wait of a ResNet-50 training step on the CPU, fed by our loader with the full augmentation (#22 item 2).

    python benchmarks/loader_wait.py [--work data/loader_peers] [--steps 5] [--workers 2] [--patch 128]
    python benchmarks/loader_wait.py --quick      # ResNet-10, 64³ patches, 3 steps: a check that it runs

The loader is ``benchmarks/loader_peers.py``'s "ours" (its store of 6 bench CTs, ``PretrainStream`` in a torch
DataLoader, rotation + scaling + mirroring + brightness + contrast + gamma in the workers, a third of the patches
on foreground, batch 2); the step is ``benchmarks/train.py``'s (the pretraining network, cross-entropy, forward +
backward + optimiser step) on the batches the loader gives, torch on 2 threads. The loader's workers run on the
same 2 cores as the step, as they would on a user's machine. After one warm-up step, each step's wait for its
batch and the step itself are timed. Goal: mean wait under 5 % of the mean step. Prints a markdown table with the
load average.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data/bench"))
    ap.add_argument("--work", type=Path, default=Path("data/loader_peers"))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--encoder", default="resnet50")
    ap.add_argument("--quick", action="store_true", help="resnet10, 64³ patches, 3 steps")
    args = ap.parse_args()
    if args.quick:
        args.encoder, args.patch, args.steps = "resnet10", 64, 3
    import torch

    from loader_peers import ours, prepare
    from model.training.config import TrainConfig
    from model.training.loop import PretrainStepper, make_optimizer, make_scheduler
    from model.training.pretrain import build_pretrain_net

    store, _ = prepare(args.data, args.work, 6)  # loader_peers.py's default: the same store
    torch.set_num_threads(2)
    torch.manual_seed(0)
    net = build_pretrain_net(args.encoder, {"liver": 3})
    patch = (args.patch,) * 3
    cfg = TrainConfig(store="-", out="-", encoder=args.encoder, patch=patch, batch=2, steps=args.steps + 1)
    opt = make_optimizer(net.parameters(), cfg)
    stepper = PretrainStepper(net, opt, make_scheduler(opt, cfg), loss="ce", device=torch.device("cpu"),
                              amp=False)
    it = ours(store, args.patch, args.workers)
    waits, steps = [], []
    for i in range(args.steps + 1):
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        stepper(batch["image"].float(), batch["label"].long(), "liver")
        t2 = time.perf_counter()
        if i:  # the first batch waits for the workers to start: warm-up
            waits.append(t1 - t0)
            steps.append(t2 - t1)
        print(f"step {i}: wait {1e3 * (t1 - t0):.0f} ms, step {t2 - t1:.2f} s", file=sys.stderr, flush=True)
    wait, step = statistics.mean(waits), statistics.mean(steps)
    print(f"\n{args.encoder}, batch 2 of {args.patch}³ patches, CPU (torch 2 threads), {args.workers} loader workers, "
          f"{args.steps} steps after 1 of warm-up; load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}\n")
    print("| mean wait (ms) | max wait (ms) | mean step (s) | wait share | goal |\n|---|---|---|---|---|")
    share = wait / step
    print(f"| {1e3 * wait:.0f} | {1e3 * max(waits):.0f} | {step:.2f} | {100 * share:.1f} % | < 5 %: "
          f"{'met' if share < 0.05 else 'not met'} |")


if __name__ == "__main__":
    main()
