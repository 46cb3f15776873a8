"""One optimiser step of a transfer network (:class:`~model.nets.transfer.TransferNet`).

Unlike pretraining, every parameter is used at every step, so under DDP the whole network is wrapped in
``DistributedDataParallel``. Augmentation (rotation + translation) runs here, on the device, on the whole
batch at once, drawn from ``(seed, step)`` so that a resumed run augments exactly as the uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from model.training.loop import DistEnv, segmentation_loss

__all__ = ["FinetuneStepper"]

Augment = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


class FinetuneStepper:
    """Forward, loss, backward, optimiser and scheduler step of a segmentation or classification network.

    ``augment(image, label, step)`` (on the device) runs before the forward pass of segmentation batches.
    ``next_step`` is the 0-based index of the batch the next call trains on (the loop calls in step order).
    """

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, *, loss: str, device: torch.device, amp: bool,
                 compile: bool = False, env: DistEnv = DistEnv(), augment: Augment | None = None,
                 start_step: int = 0) -> None:
        self.net, self.optimizer, self.scheduler = net, optimizer, scheduler
        self.loss_kind, self.device, self.amp, self.env, self.augment = loss, device, amp, env, augment
        self.next_step = int(start_step)
        self.memory_format = torch.channels_last_3d if device.type == "cuda" else torch.contiguous_format
        net.to(device=device, memory_format=self.memory_format)
        model: nn.Module = net
        if env.distributed:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
        self.model = torch.compile(model) if compile else model

    def __call__(self, image: torch.Tensor, labels: torch.Tensor, domain: str = "") -> torch.Tensor:
        """Train on one batch: image (B, 1, D, H, W), labels (B, D, H, W) or (B,); returns the detached loss."""
        self.net.train()
        image = image.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if self.augment is not None and self.net.segmentation:
            image, labels = self.augment(image, labels, self.next_step)
        image = image.contiguous(memory_format=self.memory_format)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.model(image)
        if self.net.segmentation:
            loss = segmentation_loss(logits, labels, self.loss_kind)
        else:
            loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.next_step += 1
        return loss.detach()

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])
