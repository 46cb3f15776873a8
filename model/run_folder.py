"""A fine-tuning run folder, read back: its ``finetune.json``, the trained network of one stage, and output paths
that cannot leave their folder.

Only the configuration and checkpoint files of training are read here (:mod:`model.training.finetune_config`,
:mod:`model.training.checkpoint`); evaluation and prediction import this module, not the training recipes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.tasks.base import FinetuneError

if TYPE_CHECKING:
    import torch

    from model.nets.transfer import TransferNet
    from model.training.finetune_config import FinetuneConfig

__all__ = ["RUN_FILE", "inside", "load_stage", "net_options", "read_run"]

RUN_FILE = "finetune.json"


def read_run(run: str | Path) -> dict[str, Any]:
    """``RUN/finetune.json``; a clear error for a folder that is not a fine-tuning run, and a one-line
    :class:`FinetuneError` naming the file for one that is damaged: not JSON, not an object, or a preprocessing
    recipe no scan can be resampled with (:func:`catalog.card.recipe_problem`: a target spacing outside the voxel
    sizes a header may have, a number that is not finite, an unknown dtype)."""
    from catalog.card import recipe_problem
    from catalog.values import read_json

    path = Path(run) / RUN_FILE
    if not path.is_file():
        raise FinetuneError(f"{run} is not a fine-tuning run (no {RUN_FILE}); run `med3d-train finetune` first")
    try:
        spec = read_json(path)
    except ValueError as exc:
        raise FinetuneError(str(exc)) from None
    if not isinstance(spec, dict):
        raise FinetuneError(f"{path}: not a run file (a JSON object: task, stages, preprocessing...)")
    problem = recipe_problem(spec.get("preprocessing"))
    if problem:
        raise FinetuneError(f"{path}: preprocessing: {problem}; the run file is damaged, fine-tune again")
    return spec


def net_options(cfg: FinetuneConfig, in_chans: int = 1) -> dict[str, Any]:
    """The options of :func:`model.nets.transfer.build_transfer_net` that ``cfg`` sets, and the input channels
    (which the store decides; a checkpoint records them)."""
    return {"aspp_rates": cfg.aspp_rates, "decoder_widths": cfg.decoder_widths, "in_chans": int(in_chans)}


def load_stage(run: str | Path, stage: str, device: torch.device | str = "cpu"
               ) -> tuple[TransferNet, FinetuneConfig]:
    """The trained network of one stage of a run (eval mode, on ``device``) and its config."""
    import torch

    from model.nets.transfer import build_transfer_net
    from model.tasks.base import get_task
    from model.training.checkpoint import CHECKPOINT_NAME, load_checkpoint, load_model_state
    from model.training.finetune_config import FinetuneConfig

    folder = Path(run) if stage == "main" else Path(run) / stage
    ckpt = load_checkpoint(folder / CHECKPOINT_NAME)
    try:
        cfg = FinetuneConfig.from_dict(ckpt["config"])
    except ValueError as exc:  # a value of the wrong type or range ("amp": "no"), an unknown field
        raise FinetuneError(f"{folder / CHECKPOINT_NAME}: config: {exc}") from None

    def build() -> TransferNet:
        return build_transfer_net(get_task(cfg.task).kind(cfg), cfg.encoder, int(ckpt["num_classes"]),
                                  net_options(cfg, int(ckpt.get("in_chans", 1))))

    # The network's size comes from the checkpoint's own config (num_classes, in_chans): it is built on the meta
    # device first and compared with the saved tensors, so a crafted config allocates nothing it does not hold.
    with torch.device("meta"):
        load_model_state(build(), ckpt, folder / CHECKPOINT_NAME, error=FinetuneError)
    net = build()
    load_model_state(net, ckpt, folder / CHECKPOINT_NAME, error=FinetuneError)
    return net.to(device).eval(), cfg


def stage_steps(run: str | Path, spec: dict[str, Any], log: Callable[[str], None]) -> dict[str, list[int]]:
    """{stage: [checkpoint step, planned steps]} of every stage of ``run``, read without loading the weights
    (mmap); says so through ``log`` when a stage has not finished (training still running, or stopped), and
    raises FileNotFoundError naming the fix when a stage has no checkpoint yet."""
    import torch

    from catalog.names import path_component
    from model.training.checkpoint import CHECKPOINT_NAME

    out: dict[str, list[int]] = {}
    for stage in spec.get("stages") or ["main"]:
        path_component(stage, "stages", Path(run) / RUN_FILE)  # a folder of the run, never one elsewhere
        path = Path(run) / CHECKPOINT_NAME if stage == "main" else Path(run) / stage / CHECKPOINT_NAME
        if not path.is_file() and out:  # a later stage not trained (yet): the earlier ones are measured
            log(f"note: {path} does not exist: the {stage} stage has not been trained (yet)")
            continue
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist yet: the run has written no checkpoint of its {stage} "
                                    "stage (still in its first --ckpt-every steps, or never started); evaluate it "
                                    "once training has written one")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            step, planned = int(ckpt["step"]), int(ckpt["config"]["steps"])
        except Exception:  # a damaged file: loading the stage says so properly
            continue
        out[stage] = [step, planned]
        if step < planned:
            log(f"note: {path} is at step {step} of {planned}: the run is still training or stopped; this measures "
                "those weights (summary.json: checkpoint_steps)")
    return out


def inside(folder: str | Path, name: str, *, what: str = "file name",
           source: object = "the store's catalog (case_id) or the input's file name") -> Path:
    """``folder/name`` resolved, checked to lie inside ``folder``: a name from a store's catalog (a case id like
    ``../../x``) or from a file name must never steer a write elsewhere, nor may an existing symbolic link there.
    ``name`` must be one plain path component (:func:`catalog.names.path_component`); ``what`` and ``source``
    name its field and where it came from in the message. Raises ValueError naming both."""
    from catalog.names import path_component

    root = Path(folder).resolve()
    if isinstance(name, str) and ("/" in name or name == "..") and "\0" not in name:
        raise ValueError(f"refusing to write {name!r}: it would land at {(root / name).resolve()}, outside {root}; "
                         f"{source} is malformed")
    path_component(name, what, source)
    path = (root / name).resolve()
    if path.parent != root:  # an existing symbolic link that points elsewhere
        raise ValueError(f"refusing to write {name!r}: {root / name} is a link to {path}, outside {root}")
    return path
