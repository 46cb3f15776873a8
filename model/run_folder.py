"""A fine-tuning run folder, written and read back: its ``finetune.json``, the network record of a checkpoint,
the trained network of one stage, and output paths that cannot leave their folder.

A checkpoint records its network (:func:`net_record`: head, encoder, classes, the head's options and input
channels), and :func:`load_stage` rebuilds the network from that record alone, never from the task registry: a
run folder keeps loading whatever tasks exist now. Checkpoints written before the record (issue 20) are read from
what they held: ``kind`` (the head), ``encoder``, ``num_classes``, ``in_chans`` and the flat config's
``aspp_rates`` and ``decoder_widths``.

Only the configuration and checkpoint files of training are read here (:mod:`model.training.finetune_config`,
:mod:`model.training.checkpoint`); evaluation and prediction import this module, not the training recipes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.task_api import FinetuneError

if TYPE_CHECKING:
    import torch

    from model.task_api import Task
    from model.nets.transfer import TransferNet
    from model.training.finetune_config import FinetuneConfig

__all__ = ["RUN_FILE", "inside", "load_stage", "net_record", "read_run", "stage_steps", "write_run_file"]

RUN_FILE = "finetune.json"


def read_run(run: str | Path, task: Task | None = None) -> dict[str, Any]:
    """``RUN/finetune.json``; a clear error for a folder that is not a fine-tuning run, and a one-line
    :class:`FinetuneError` naming the file for one that is damaged: not JSON, not an object, or a preprocessing
    recipe no scan can be resampled with (:func:`catalog.card.recipe_problem`: a target spacing outside the voxel
    sizes a header may have, a number that is not finite, an unknown dtype). With ``task``: also one that is not a
    run of that task."""
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
    if task is not None and spec.get("task") != task.name:
        raise FinetuneError(f"{path}: a run of task {spec.get('task')!r}, not of {task.name!r}")
    return spec


def net_record(head: str, encoder: str, num_classes: int, options: dict[str, Any]) -> dict[str, Any]:
    """The ``net`` entry of a checkpoint: everything :func:`model.nets.transfer.build_transfer_net` needs."""
    return {"head": head, "encoder": encoder, "num_classes": int(num_classes), "options": dict(options)}


def saved_net(ckpt: dict[str, Any], source: object) -> dict[str, Any]:
    """The checkpoint's :func:`net_record`; for a checkpoint written before it (issue 20), the same from what that
    checkpoint held. :class:`FinetuneError` naming ``source`` when neither is there."""
    net = ckpt.get("net")
    if isinstance(net, dict) and {"head", "encoder", "num_classes", "options"} <= set(net):
        return net
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    if not all(k in ckpt for k in ("kind", "encoder", "num_classes")):
        raise FinetuneError(f"{source}: no network record (net, or kind/encoder/num_classes): not a fine-tuning "
                            "checkpoint, or a damaged one")
    options = {k: config[k] for k in ("aspp_rates", "decoder_widths") if k in config}
    return net_record(ckpt["kind"], ckpt["encoder"], ckpt["num_classes"],
                      {**options, "in_chans": int(ckpt.get("in_chans", 1))})


def load_stage(run: str | Path, stage: str, device: torch.device | str = "cpu", *,
               config_type: type[FinetuneConfig]) -> tuple[TransferNet, Any]:
    """The trained network of one stage of a run (eval mode, on ``device``), rebuilt from the checkpoint's network
    record, and its config read as ``config_type`` (the run's task's)."""
    import torch

    from model.nets.transfer import build_transfer_net
    from model.training.checkpoint import CHECKPOINT_NAME, load_checkpoint, load_model_state

    folder = Path(run) if stage == "main" else Path(run) / stage
    path = folder / CHECKPOINT_NAME
    ckpt = load_checkpoint(path)
    try:
        cfg = config_type.from_dict(ckpt["config"])
    except ValueError as exc:  # a value of the wrong type or range ("amp": "no"), an unknown field
        raise FinetuneError(f"{path}: config: {exc}") from None
    record = saved_net(ckpt, path)

    def build() -> TransferNet:
        options = {k: tuple(v) if isinstance(v, list) else v for k, v in record["options"].items()}
        try:
            return build_transfer_net(str(record["head"]), str(record["encoder"]), int(record["num_classes"]),
                                      options)
        except (ValueError, TypeError, KeyError) as exc:
            raise FinetuneError(f"{path}: its network ({record['head']}, {record['encoder']}) cannot be built: "
                                f"{exc}") from None

    # The network's size comes from the checkpoint's own record (num_classes, in_chans): it is built on the meta
    # device first and compared with the saved tensors, so a crafted record allocates nothing it does not hold.
    with torch.device("meta"):
        load_model_state(build(), ckpt, path, error=FinetuneError)
    net = build()
    load_model_state(net, ckpt, path, error=FinetuneError)
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


def write_run_file(root: Path, cfg: FinetuneConfig, task: Task, record: dict[str, Any],
                   preprocessing: dict[str, Any]) -> None:
    """Write ``root/finetune.json`` (task, encoder, init and its kind, metric, stages, split measured on, the store's
    preprocessing, the task's :meth:`~model.task_api.Task.run_info`) and the task's own run files; a folder that
    holds another run (task, encoder or init) is refused with :class:`FinetuneError`."""
    import json

    from catalog.redact import redact_url, redact_urls

    root.mkdir(parents=True, exist_ok=True)
    data = redact_urls({"task": cfg.task, "encoder": cfg.encoder, "init": cfg.init, "init_kind": record["kind"],
                        "metric": task.metric, "stages": list(task.stages), "store": cfg.store,
                        "eval_split": cfg.measure_split or task.eval_split, "preprocessing": preprocessing,
                        **task.run_info(cfg)})
    path = root / RUN_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        if (old.get("task"), old.get("encoder"), old.get("init")) != (cfg.task, cfg.encoder, redact_url(cfg.init)):
            raise FinetuneError(f"{root} holds a {old.get('task')} run ({old.get('encoder')}, init "
                                f"{old.get('init')}); choose another --out")
    task.write_run_files(root, cfg)
    path.write_text(json.dumps(data, indent=2) + "\n")
