"""The encoder-weights formats of ``med3d-train export``: ``medicalnet`` (a ``.pth`` MedicalNet and MONAI load, and
its card ``OUT.json``) and ``safetensors`` (no pickle, the card in the metadata, a ``README.md`` model card beside).

Both take the encoder of one of our checkpoints (pretraining or fine-tuning), drop the heads, and write the card
:func:`model.card.checkpoint_card` makes (how the weights' training data was preprocessed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model.export.formats import ExportRequest, ExportUsageError, register_format

__all__ = ["export_medicalnet_file", "export_safetensors_folder"]


def _encoder_and_card(request: ExportRequest, weights: Path) -> tuple[Any, Any, dict[str, Any] | None]:
    from catalog.card import CardError
    from model.card import checkpoint_card
    from model.training.checkpoint import load_checkpoint
    from model.training.pretrain import load_pretrained_encoder

    path = request.checkpoint
    try:
        encoder, report = load_pretrained_encoder(path)
        content = checkpoint_card(load_checkpoint(path), encoder, weights, path) if request.card else None
    except CardError as exc:
        raise ValueError(f"{exc}; pass --no-card to export the weights without a card") from exc
    return encoder, report, content


@register_format("medicalnet", "{'state_dict': {'module.*'}} OUT.pth, loadable by MedicalNet and MONAI (ResNets).")
def export_medicalnet_file(request: ExportRequest) -> list[str]:
    """MedicalNet's ``{"state_dict": {"module.*"}}`` and, with a card, ``OUT.json``."""
    from catalog.card import card_path, write_card
    from model.nets.weights import export_medicalnet

    out = request.out
    if out.suffix == ".safetensors" or out.is_dir():
        raise ExportUsageError(f"OUT {out}: --format medicalnet writes one OUT.pth file; for a folder or "
                               ".safetensors give --format safetensors")
    if request.card and card_path(out) == out:
        raise ExportUsageError(f"OUT {out} ends in .json, where its card would go; name the weights OUT.pth")
    encoder, report, content = _encoder_and_card(request, out)
    request.log(report.short())
    written = export_medicalnet(encoder, out)
    lines = [f"wrote {encoder.name} encoder (medicalnet format) to {written}"]
    if content is not None:
        where = write_card(content, card_path(written))
        spacings = "; ".join(f"{d} {'x'.join(f'{v:g}' for v in e['target_spacing'])} mm"
                             for d, e in content["domains"].items())
        lines.append(f"wrote its card to {where} ({content['kind']}: {spacings}, (z, y, x))")
    return lines


@register_format("safetensors", "OUT_DIR/model.safetensors (or OUT.safetensors), card in its metadata, README.md "
                                "model card beside it.")
def export_safetensors_folder(request: ExportRequest) -> list[str]:
    """The encoder as safetensors with its card in the metadata, and the model card."""
    from model.export.safetensors_card import export_safetensors, safetensors_target

    try:
        weights = safetensors_target(request.out)
    except ValueError as exc:
        raise ExportUsageError(str(exc)) from None
    encoder, report, content = _encoder_and_card(request, weights)
    request.log(report.short())
    done = export_safetensors(encoder, content, weights, license=request.license)
    return [f"wrote {encoder.name} encoder ({done.tensors} tensors, safetensors) to {done.weights}"
            + (f", its card in the metadata and the model card {done.readme}" if done.readme else "")]
