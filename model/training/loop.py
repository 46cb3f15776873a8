"""The training loop: one optimiser step per batch, gradient sync under DDP, checkpoints, metrics, progress.

Everything here is independent of where batches come from: the recipe (``model.training.pretrain``) builds the network,
the loader and the callbacks that write checkpoints and validate; :func:`run_loop` drives them.

Multi-GPU and unused branches
-----------------------------
Med3D trains one decoder branch per domain and every batch holds one domain, so at each step all branches
but one receive no gradient. Plain ``DistributedDataParallel`` over the whole network then fails at the next
step ("Expected to have finished reduction in the prior iteration ... parameters that were not used in
producing loss"). The alternatives:

- ``find_unused_parameters=True`` traverses the autograd graph after every forward to find the unused
  parameters (CPU time at every step) and still reduces their bucket slots; whether their ``.grad`` then stays
  ``None`` or becomes zero is a DDP internal that has changed between PyTorch versions, and a zero gradient
  would move Adam's moments and apply weight decay to the branches of the other domains.
- ``static_graph=True`` assumes the same parameters are used at every step, which is false here.
- **What we do**: only the encoder (used in full at every step) is wrapped in DDP, with its fast bucketed
  all-reduce overlapping backward. The head stays outside DDP; after ``backward`` the active branch's few
  gradients (one 1×1×1 conv) are averaged by hand with one ``all_reduce``. That is correct because every rank
  trains the same domain at a given step (the domain is a pure function of (seed, step)), so all ranks
  reduce the same tensors in the same order; the other branches keep ``grad=None`` and are left untouched by
  the optimiser. Head parameters are broadcast from rank 0 once at start, as DDP does for the encoder.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from model.training.config import TrainConfig

__all__ = [
    "DistEnv",
    "PretrainStepper",
    "make_optimizer",
    "make_scheduler",
    "resolve_device",
    "run_loop",
    "segmentation_loss",
    "soft_dice_loss",
]


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a ``torchrun`` job (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> DistEnv:
        """Read ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` as set by ``torchrun``."""
        env = os.environ if environ is None else environ
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", env.get("LOCAL_RANK", "0")))
        return cls(rank=rank, world_size=world, local_rank=int(env.get("LOCAL_RANK", "0")))


def resolve_device(name: str | None, env: DistEnv) -> torch.device:
    """``None`` -> CUDA when available, else CPU; under torchrun a bare ``cuda`` means ``cuda:LOCAL_RANK``."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda, but this torch build or machine has no CUDA device; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", env.local_rank if env.distributed else torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


def init_distributed(env: DistEnv, device: torch.device) -> bool:
    """Join the torchrun process group (NCCL on CUDA, gloo on CPU); True when this call created it."""
    if not env.distributed or dist.is_initialized():
        return False
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", rank=env.rank,
                            world_size=env.world_size)
    return True


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes, pooled over the batch.

    logits (N, C, D, H, W) float; labels (N, D, H, W) int64 in [0, C). Classes absent from both the
    softmax and the labels contribute ≈1 thanks to ``eps``, so empty patches do not blow up the loss.
    """
    probs = logits.softmax(dim=1)[:, 1:]
    onehot = F.one_hot(labels, logits.shape[1]).movedim(-1, 1)[:, 1:].to(probs.dtype)
    dims = (0, 2, 3, 4)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return 1 - ((2 * inter + eps) / (denom + eps)).mean()


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str = "ce") -> torch.Tensor:
    """Cross-entropy (``"ce"``) or cross-entropy + soft Dice (``"ce+dice"``), computed in float32.

    logits (N, C, D, H, W); labels (N, D, H, W) int64.
    """
    logits = logits.float()
    loss = F.cross_entropy(logits, labels)
    if kind == "ce+dice":
        loss = loss + soft_dice_loss(logits, labels)
    elif kind != "ce":
        raise ValueError(f"unknown loss {kind!r}: use 'ce' or 'ce+dice'")
    return loss


def make_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam, or SGD with Nesterov momentum ``cfg.momentum``; learning rate ``cfg.lr``."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                           weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule over ``cfg.steps``: poly (power 0.9), cosine to 0, or constant.

    Built-in schedulers only, whose ``state_dict`` holds plain numbers (a ``LambdaLR`` would not save its
    function), so a resumed run restores the exact rate.
    """
    if cfg.scheduler == "poly":
        return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=cfg.steps, power=0.9)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.steps, eta_min=0.0)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


class PretrainStepper:
    """One optimiser step of a :class:`~model.nets.heads.Med3DPretrainNet` on a one-domain batch.

    Handles autocast (bf16), channels_last_3d, ``torch.compile`` of the encoder, and, under DDP, the split
    described in the module docstring: DDP around the encoder, a manual all-reduce for the active branch.
    """

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, *, loss: str, device: torch.device,
                 amp: bool, compile: bool = False, env: DistEnv = DistEnv()) -> None:
        self.net, self.optimizer, self.scheduler = net, optimizer, scheduler
        self.loss_kind, self.device, self.amp, self.env = loss, device, amp, env
        # channels_last_3d lets cuDNN pick its faster NDHWC kernels; on CPU it brings nothing.
        self.memory_format = torch.channels_last_3d if device.type == "cuda" else torch.contiguous_format
        net.to(device=device, memory_format=self.memory_format)
        encoder: nn.Module = net.encoder
        if env.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            encoder = DistributedDataParallel(encoder, device_ids=ids)
            with torch.no_grad():
                for t in [*net.head.parameters(), *net.head.buffers()]:
                    dist.broadcast(t, src=0)
        self.encoder = torch.compile(encoder) if compile else encoder
        self._domains_checked = not env.distributed

    def forward(self, image: torch.Tensor, domain: str) -> torch.Tensor:
        """image (N, 1, D, H, W) on the device -> logits (N, classes, D, H, W) (bf16 under autocast)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return self.net.head(self.encoder(image)[-1], domain, image.shape[-3:])

    def __call__(self, image: torch.Tensor, labels: torch.Tensor, domain: str) -> torch.Tensor:
        """Forward, loss, backward, gradient sync, optimiser and scheduler step; returns the detached loss."""
        self.net.train()
        image = image.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        labels = labels.to(self.device, non_blocking=True)
        # set_to_none: a branch not used at this step must keep grad None, not 0, or Adam would still move it.
        self.optimizer.zero_grad(set_to_none=True)
        loss = segmentation_loss(self.forward(image, domain), labels, self.loss_kind)
        loss.backward()
        if self.env.distributed:
            self._check_same_domain(domain)
            self._average_branch_grads(domain)
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach()

    def _check_same_domain(self, domain: str) -> None:
        # Checked once: the loader's domain schedule is a pure function of (seed, step), so agreement at the
        # first step means agreement throughout; disagreement would all-reduce different branches and hang.
        if self._domains_checked:
            return
        domains: list[str | None] = [None] * self.env.world_size
        dist.all_gather_object(domains, domain)
        if len(set(domains)) != 1:
            raise RuntimeError(f"ranks train different domains at the same step ({domains}); every rank must use "
                               "the same seed and store")
        self._domains_checked = True

    def _average_branch_grads(self, domain: str) -> None:
        grads = [p.grad for p in self.net.head.branches[domain].parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.env.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


def _mean_over_ranks(value: torch.Tensor, env: DistEnv) -> float:
    if env.distributed:
        value = value.clone()
        dist.all_reduce(value)
        value /= env.world_size
    return float(value.item())


def _update_summary(summary: dict[str, Any], domain: str, loss: float, step: int) -> None:
    """Running per-domain loss (exponential mean, weight 0.1) and step counts, kept in the checkpoint."""
    ema = summary.setdefault("loss_ema", {})
    counts = summary.setdefault("steps_per_domain", {})
    ema[domain] = loss if domain not in ema else 0.9 * ema[domain] + 0.1 * loss
    counts[domain] = counts.get(domain, 0) + 1
    summary["last_step"] = step


def run_loop(
    stepper: PretrainStepper,
    batches: Iterable[Mapping[str, Any]],
    *,
    start_step: int,
    total_steps: int,
    stop_after: int | None = None,
    ckpt_every: int = 0,
    save: Callable[[int], None] | None = None,
    val_every: int = 0,
    validate: Callable[[int], Mapping[str, Any]] | None = None,
    logger: Any = None,
    summary: dict[str, Any] | None = None,
    progress: bool = True,
    log_every: int = 10,
) -> dict[str, Any]:
    """Train from ``start_step`` (completed steps) to ``total_steps``; returns the metrics summary.

    ``batches`` yields dicts {image (B, 1, D, H, W) float32, label (B, D, H, W) int64, domain str, step int},
    the first one for step ``start_step`` (0-based batch index). After the batch of index ``s``, ``s + 1`` steps
    are complete: ``save(s + 1)`` runs every ``ckpt_every`` completed steps and at the end, ``validate(s + 1)``
    every ``val_every`` steps and at the end (its dict goes to the log as kind ``"val"``). ``stop_after`` ends
    the call after that many steps, with a checkpoint (a graceful preemption; ``--resume`` continues).
    Each step logs kind ``"train"``: domain, loss (mean over ranks), lr, patches_per_s, data_wait_s, step_s.
    """
    from tqdm.auto import tqdm

    env = stepper.env
    summary = {} if summary is None else summary
    end = total_steps if stop_after is None else min(total_steps, start_step + stop_after)
    bar = tqdm(total=total_steps, initial=start_step, disable=not (progress and env.is_main), unit="step",
               dynamic_ncols=True)
    it = iter(batches) if start_step < end else iter(())  # no loader workers for a finished run
    step = start_step
    try:
        while step < end:
            t0 = time.perf_counter()
            batch = next(it)
            t1 = time.perf_counter()
            assert int(batch["step"]) == step, f"loader yielded step {batch['step']}, the loop is at {step}"
            domain = batch["domain"]
            lr = stepper.lr  # the rate this step uses (the scheduler moves it on inside the step)
            loss = _mean_over_ranks(stepper(batch["image"], batch["label"], domain), env)
            t2 = time.perf_counter()
            step += 1
            n = int(batch["image"].shape[0]) * env.world_size
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {step} (domain {domain}); lower --lr or check "
                                         "the data of this domain")
            _update_summary(summary, domain, loss, step)
            if logger is not None:
                logger.log("train", step, domain=domain, loss=loss, lr=lr,
                           patches_per_s=round(n / max(t2 - t0, 1e-9), 3), data_wait_s=round(t1 - t0, 6),
                           step_s=round(t2 - t1, 6))
            bar.update(1)
            if step % log_every == 0 or step == end:
                bar.set_postfix({k: f"{v:.3f}" for k, v in summary["loss_ema"].items()}, refresh=False)
            last = step == end
            if validate is not None and val_every > 0 and (step % val_every == 0 or step == total_steps):
                record = dict(validate(step))
                summary["val"] = {"step": step, **record}
                if logger is not None:
                    logger.log("val", step, **record)
            if save is not None and ((ckpt_every > 0 and step % ckpt_every == 0) or last):
                save(step)
    finally:
        bar.close()
    return summary
