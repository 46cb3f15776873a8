"""Whole-volume inference on the stored grid: sliding windows with bounded memory, and the segmenters of the
transfer tasks (one patch network; the liver's coarse-then-fine chain).

A *segmenter* is any callable ``(image (Z, Y, X) float32 z-scored, on the stored grid) -> label (Z, Y, X)
uint8``: :mod:`model.evaluation.evaluate` and :mod:`model.evaluation.predict` only need that, so tests can put
an oracle in place of a network and check the geometry path alone. A segmenter whose ``in_chans`` attribute is
above 1 (a network fine-tuned with ``--channels all``) is given every channel, (C, Z, Y, X).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage

__all__ = ["LiverSegmenter", "PatchSegmenter", "Segmenter", "largest_component", "sliding_window_probs",
           "tile_starts"]

Segmenter = Callable[[np.ndarray], np.ndarray]
Box = tuple[tuple[int, int, int], tuple[int, int, int]]


def tile_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start offsets of tiles of length ``patch`` covering ``[0, size)`` with at least ``overlap`` (fraction of
    ``patch``) between neighbours; first tile at 0, last ending at ``size``. ``[0]`` when ``size <= patch``."""
    if size <= patch:
        return [0]
    stride = max(1, int(patch * (1 - overlap)))
    n = math.ceil((size - patch) / stride) + 1
    return sorted({round(i * (size - patch) / (n - 1)) for i in range(n)})


@torch.no_grad()
def sliding_window_probs(predict: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor,
                         patch: Sequence[int], n_classes: int, *, overlap: float = 0.25, batch: int = 2,
                         device: torch.device | str = "cpu", amp: bool = False,
                         box: Box | None = None) -> torch.Tensor:
    """Softmax probabilities by tiled inference at patch size, averaged uniformly where tiles overlap.

    ``predict`` maps a batch (N, C, *patch) on ``device`` to logits (N, n_classes, *patch). image (Z, Y, X)
    (C = 1) or (C, Z, Y, X) float32 on the CPU; ``box`` (lo, hi) restricts inference to that sub-volume, and the result has the box's
    shape: (n_classes, *box size) float32 on the CPU. Memory: the box's image and n_classes + 1 float32
    accumulators of its size, whatever the volume's size. A box (or volume) smaller than the patch is
    zero-padded (zero is the mean of a z-scored volume).
    """
    device = torch.device(device)
    image = image[None] if image.dim() == 3 else image
    lo, hi = box if box is not None else ((0, 0, 0), tuple(int(s) for s in image.shape[1:]))
    size = tuple(b - a for a, b in zip(lo, hi))
    padded = tuple(max(s, p) for s, p in zip(size, patch))
    vol = torch.zeros((image.shape[0], *padded), dtype=torch.float32)
    vol[:, : size[0], : size[1], : size[2]] = image[:, lo[0]: hi[0], lo[1]: hi[1], lo[2]: hi[2]]
    acc = torch.zeros((n_classes, *padded), dtype=torch.float32)
    hits = torch.zeros(padded, dtype=torch.float32)
    starts = [(z, y, x) for z in tile_starts(padded[0], patch[0], overlap)
              for y in tile_starts(padded[1], patch[1], overlap) for x in tile_starts(padded[2], patch[2], overlap)]
    pz, py, px = patch
    for i in range(0, len(starts), batch):
        group = starts[i: i + batch]
        x = torch.stack([vol[:, z: z + pz, y: y + py, w: w + px] for z, y, w in group])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = predict(x.to(device))
        probs = logits.float().softmax(dim=1).cpu()
        for (z, y, w), p in zip(group, probs):
            acc[:, z: z + pz, y: y + py, w: w + px] += p
            hits[z: z + pz, y: y + py, w: w + px] += 1
    acc /= hits
    return acc[:, : size[0], : size[1], : size[2]]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean mask (all False stays all False)."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


class PatchSegmenter:
    """A segmentation network run by sliding window over the whole stored volume; argmax labels (uint8).
    ``in_chans``: the channels the network reads (its encoder's), so callers give it (C, Z, Y, X) when above 1."""

    def __init__(self, net: torch.nn.Module, patch: Sequence[int], n_classes: int, *, overlap: float = 0.25,
                 batch: int = 2, device: torch.device | str = "cpu", amp: bool = False) -> None:
        self.net, self.patch, self.n_classes = net.eval(), tuple(patch), int(n_classes)
        self.overlap, self.batch, self.device, self.amp = overlap, batch, torch.device(device), amp
        self.in_chans = int(getattr(getattr(net, "encoder", None), "in_chans", 1))

    def probs(self, image: np.ndarray, box: Box | None = None) -> torch.Tensor:
        return sliding_window_probs(self.net, torch.from_numpy(np.asarray(image, np.float32)), self.patch,
                                    self.n_classes, overlap=self.overlap, batch=self.batch, device=self.device,
                                    amp=self.amp, box=box)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if (image.ndim == 4 and image.shape[0] != self.in_chans) or (image.ndim == 3 and self.in_chans != 1):
            raise ValueError(f"the network reads {self.in_chans} channel(s), the image has shape {image.shape}")
        return self.probs(image).argmax(dim=0).to(torch.uint8).numpy()


class LiverSegmenter:
    """The LiTS chain: (1) the coarse network on the whole volume resized to ``coarse_shape``, its liver mask's
    largest component gives the ROI; (2) the ROI grown by ``margin_mm`` on each side, segmented by the fine
    network by sliding window at ``patch`` (only the ROI is held in memory at full resolution); the largest
    component of the result is the liver. With ``fine=None`` the coarse mask, upsampled, is the answer.
    """

    def __init__(self, coarse: torch.nn.Module, fine: torch.nn.Module | None, *, coarse_shape: Sequence[int],
                 patch: Sequence[int], spacing: Sequence[float], margin_mm: float = 15.0, overlap: float = 0.25,
                 batch: int = 2, device: torch.device | str = "cpu", amp: bool = False) -> None:
        self.coarse, self.coarse_shape = coarse.eval(), tuple(int(s) for s in coarse_shape)
        self.fine = None if fine is None else PatchSegmenter(fine, patch, 2, overlap=overlap, batch=batch,
                                                             device=device, amp=amp)
        self.spacing, self.margin_mm = tuple(float(s) for s in spacing), float(margin_mm)
        self.device, self.amp = torch.device(device), amp

    @torch.no_grad()
    def coarse_probs(self, image: np.ndarray) -> torch.Tensor:
        """Liver probability (coarse_shape) float32 from the coarse network."""
        from model.data.task_streams import resize_image

        x = resize_image(torch.from_numpy(np.asarray(image, np.float32)), self.coarse_shape)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.coarse(x[None, None].to(self.device))
        return logits.float().softmax(dim=1)[0, 1].cpu()

    def roi(self, image: np.ndarray) -> Box | None:
        """The liver ROI on the stored grid from the coarse stage, grown by ``margin_mm``; None if no liver."""
        from model.data.task_streams import foreground_box

        small = largest_component(self.coarse_probs(image).numpy() >= 0.5)
        box = foreground_box(small)
        if box is None:
            return None
        scale = [s / c for s, c in zip(image.shape, self.coarse_shape)]
        margin = [int(math.ceil(self.margin_mm / sp)) for sp in self.spacing]
        lo = tuple(max(0, int(math.floor(a * f)) - m) for a, f, m in zip(box[0], scale, margin))
        hi = tuple(min(s, int(math.ceil(b * f)) + m) for b, f, m, s in zip(box[1], scale, margin, image.shape))
        return lo, hi  # type: ignore[return-value]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        out = np.zeros(image.shape, np.uint8)
        if self.fine is None:
            probs = self.coarse_probs(image)
            up = torch.nn.functional.interpolate(probs[None, None], size=image.shape, mode="trilinear",
                                                 align_corners=False)[0, 0]
            out[largest_component(up.numpy() >= 0.5)] = 1
            return out
        box = self.roi(image)
        if box is None:
            return out
        (z0, y0, x0), (z1, y1, x1) = box
        roi = self.fine.probs(image, box).argmax(dim=0).numpy().astype(bool)
        out[z0:z1, y0:y1, x0:x1] = roi
        return largest_component(out).astype(np.uint8)
