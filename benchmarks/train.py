"""Training throughput (samples/s: forward + backward + optimiser step) of the Med3D pretraining network.

    python benchmarks/train.py [--depths 10,18,34,50] [--patch 64] [--batch 2] [--steps 4] [--warmup 2]
                               [--device cpu|cuda] [--precision fp32,bf16] [--store STORE --e2e-steps 20]

Model throughput uses synthetic tensors (random image, random labels) and the real training step
(``model.training.loop.PretrainStepper``: Adam, cross-entropy, autocast and channels_last_3d as in training), so data
loading is excluded. ``TFLOP/sample`` is counted by ``torch.utils.flop_counter`` on the meta device (forward +
backward of one patch; the optimiser step is not counted) and ``TFLOP/s`` is what the step achieved. Defaults: CPU, depths 10/18/34/50 at 64³, batch 2, fp32. With CUDA available the default
is every depth in fp32 and bf16 at 128³, and the table names the GPU (``torch.cuda.get_device_name()``).
``--store`` adds an end-to-end row: ``model.training.pretrain.pretrain`` on a real store (loader workers, patch reads,
logging), patches/s and data-wait from its metrics.jsonl.

Prints a markdown table.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from model.training.config import TrainConfig  # noqa: E402
from model.training.pretrain import build_pretrain_net  # noqa: E402
from model.training.loop import PretrainStepper, make_optimizer, make_scheduler  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_throughput(encoder: str, patch: tuple[int, int, int], batch: int, device: torch.device, amp: bool,
                     steps: int, warmup: int) -> dict[str, float]:
    """Median seconds per training step on synthetic data, samples/s, parameters, peak CUDA memory."""
    torch.manual_seed(0)
    net = build_pretrain_net(encoder, {"a": 2, "b": 3})
    cfg = TrainConfig(store="-", out="-", encoder=encoder, patch=patch, batch=batch, steps=steps + warmup)
    opt = make_optimizer(net.parameters(), cfg)
    stepper = PretrainStepper(net, opt, make_scheduler(opt, cfg), loss="ce", device=device, amp=amp)
    x = torch.randn(batch, 1, *patch, device=device)
    y = (x[:, 0] > 0.5).long()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        stepper(x, y, "a")
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    params = sum(p.numel() for p in net.encoder.parameters()) / 1e6
    return {"s_per_step": s, "samples_per_s": batch / s, "params_m": params, "peak_gb": peak}


def train_tflop_per_sample(encoder: str, patch: tuple[int, int, int]) -> float:
    """Forward + backward TFLOP of one patch through the pretraining network (convolutions and matmuls, as
    ``torch.utils.flop_counter`` counts them), on the meta device: no memory, no compute."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        net = build_pretrain_net(encoder, {"a": 2, "b": 3})
        x = torch.randn(1, 1, *patch)
        y = torch.zeros(1, *patch, dtype=torch.long)
        with FlopCounterMode(display=False) as counter:
            torch.nn.functional.cross_entropy(net(x, "a"), y).backward()
    return counter.get_total_flops() / 1e12


def end_to_end(store: str, encoder: str, patch: tuple[int, int, int], batch: int, device: torch.device,
               steps: int, workers: int) -> dict[str, float]:
    """pretrain() on a store: median patches/s, data-wait and step time over the steps after the first two."""
    from model.evaluation.metrics import read_metrics
    from model.training.pretrain import pretrain

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(store=store, out=tmp, encoder=encoder, patch=patch, batch=batch, steps=steps,
                          workers=workers, val_every=0, ckpt_every=0, device=str(device))
        pretrain(cfg, progress=False, log=lambda s: None)
        rows = read_metrics(tmp, "train")[2:] or read_metrics(tmp, "train")
    return {key: statistics.median(r[key] for r in rows) for key in ("patches_per_s", "data_wait_s", "step_s")}


def main() -> None:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if cuda else "cpu")
    ap.add_argument("--depths", default=None, help="comma-separated encoder depths or names")
    ap.add_argument("--patch", type=int, default=None, help="cubic patch side (default 64 CPU, 128 CUDA)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--precision", default=None, help="fp32,bf16 (default fp32 on CPU, both on CUDA)")
    ap.add_argument("--store", default=None, help="a med3d store for an end-to-end row")
    ap.add_argument("--e2e-steps", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    default_depths = "10,18,34,50,101,152,200,preact_resnet200" if on_gpu else "10,18,34,50"
    names = [d if not d.isdigit() else f"resnet{d}" for d in (args.depths or default_depths).split(",")]
    side = args.patch or (128 if on_gpu else 64)
    patch = (side, side, side)
    precisions = (args.precision or ("fp32,bf16" if on_gpu else "fp32")).split(",")

    where = torch.cuda.get_device_name(device) if on_gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"Device: {where}; torch {torch.__version__}; patch {side}³, batch {args.batch}, "
          f"median of {args.steps} steps after {args.warmup} warm-up; synthetic tensors, Adam, cross-entropy\n")
    print("| encoder | params (M) | precision | s/step | samples/s | TFLOP/sample | TFLOP/s | peak GPU mem (GiB) |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for name in names:
        tflop = train_tflop_per_sample(name, patch)
        for prec in precisions:
            try:
                r = model_throughput(name, patch, args.batch, device, prec == "bf16", args.steps, args.warmup)
            except torch.OutOfMemoryError:
                print(f"| {name} | | {prec} | out of memory | | {tflop:.3f} | | |")
                torch.cuda.empty_cache()
                continue
            mem = f"{r['peak_gb']:.1f}" if on_gpu else "-"
            print(f"| {name} | {r['params_m']:.1f} | {prec} | {r['s_per_step']:.3f} | {r['samples_per_s']:.2f} "
                  f"| {tflop:.3f} | {tflop * r['samples_per_s']:.2f} | {mem} |", flush=True)
    if args.store:
        r = end_to_end(args.store, names[0], patch, args.batch, device, args.e2e_steps, args.workers)
        print(f"\nEnd to end ({names[0]}, store {args.store}, {args.workers} loader workers, median over steps):\n")
        print("| encoder | patches/s | data wait (s) | compute (s/step) |")
        print("| --- | ---: | ---: | ---: |")
        print(f"| {names[0]} | {r['patches_per_s']:.2f} | {r['data_wait_s']:.4f} | {r['step_s']:.3f} |")


if __name__ == "__main__":
    main()
