"""Transfer recipes: ``finetune TASK`` for every task of :mod:`model.tasks` (the paper's liver, lung, nodule of
Med3D § 3.3; ``seg`` on any segmentation store), on the pretraining machinery (checkpoints, exact resume, metrics
log, AMP, DDP). What differs between tasks (stages, head, classes, data, validation) is asked of the task.

A run folder::

    RUN/finetune.json         task, encoder, init and its kind, metric, stages, preprocessing recipe of the store
    RUN/config.json, checkpoint.pt, metrics.jsonl          one-stage tasks
    RUN/coarse/..., RUN/fine/...                            liver: one folder per stage (same files)
    RUN/eval/<split>/...                                    written by ``med3d-train evaluate``
    RUN/.lock                                               while a run writes the folder (model.training.run_lock)

>>> from model.training.finetune import finetune
>>> finetune("liver", "data/lits_store", "runs/liver", init="runs/pretrain", steps=2000)
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from model.data.case_cache import CacheSpaceError
from model.evaluation.metrics import MetricsLogger
from model.nets.transfer import TransferNet, build_transfer_net
from model.nets.weights import LoadReport
from model.tasks import FinetuneError, Task, get_task
from model.tasks.run import RUN_FILE, load_stage, net_options, read_run
from model.training.checkpoint import (CHECKPOINT_NAME, load_model_state, restore_training_state, rng_state,
                                       save_checkpoint)
from model.training.finetune_bounds import check_stage_sizes
from model.training.finetune_config import FINETUNE_RUNTIME_FIELDS, FinetuneConfig
from model.training.finetune_step import FinetuneStepper
from model.training.loop import DistEnv, init_distributed, make_optimizer, make_scheduler, resolve_device, run_loop
from model.training.pretrain import CONFIG_FILE, checkpoint_for_resume
from model.training.run_lock import acquire_run_lock

__all__ = ["RUN_FILE", "FinetuneError", "StageResult", "finetune", "finetune_stage", "init_record", "load_stage",
           "read_run", "resolve_init"]


@dataclass
class StageResult:
    net: TransferNet
    step: int
    run_dir: Path
    checkpoint: Path
    summary: dict[str, Any] = field(default_factory=dict)


def resolve_init(init: str) -> Path | None:
    """``scratch`` -> None; a run folder -> its checkpoint (a run of several stages: its last stage's, as liver's
    fine, else the earlier one's);
    a file -> itself. Raises FileNotFoundError naming what is missing."""
    if init == "scratch":
        return None
    path = Path(init)
    if path.is_dir():
        from model.tasks import TASKS

        later_first = [st for t in TASKS.values() for st in reversed(t.stages) if st != "main"]
        for rel in (CHECKPOINT_NAME, *(f"{st}/{CHECKPOINT_NAME}" for st in dict.fromkeys(later_first))):
            if (path / rel).is_file():
                return path / rel
        raise FileNotFoundError(f"--init {init}: a folder without {CHECKPOINT_NAME}; give a run folder, a checkpoint "
                                "or a MedicalNet/Kinetics .pth")
    if not path.is_file():
        raise FileNotFoundError(f"--init {init}: no such file or folder (or 'scratch')")
    return path


def init_record(init: str) -> dict[str, Any]:
    """What an ``--init`` brings besides weights: its encoder name (None when unknown), the scans it was trained
    on (None when the file does not say: MedicalNet, Kinetics), and its kind (scratch, med3d, medicalnet,
    kinetics, state_dict)."""
    path = resolve_init(init)
    if path is None:
        return {"kind": "scratch", "encoder": None, "scan_ids": [], "path": None}
    if path.suffix == ".safetensors":  # its card is in its metadata (model.export.safetensors_card)
        from model.export.safetensors_card import safetensors_record

        return safetensors_record(path)
    from model.files import read_weights_file

    obj = read_weights_file(path)  # weights_only; numpy scalars allowed (nnU-Net's checkpoint_final.pth)
    if isinstance(obj, dict) and obj.get("format") == "med3d-train":
        ids = set(obj.get("scan_ids") or []) | set(obj.get("init_scan_ids") or [])
        return {"kind": "med3d", "encoder": obj.get("encoder"), "scan_ids": sorted(ids), "path": str(path)}
    from model.nets.weights import _unwrap, detect_depth

    fmt, state = _unwrap(obj)
    try:
        encoder = detect_depth(state)
    except ValueError:
        encoder = None
    card = _init_card(path)
    if card is not None and card.get("kind") in ("pretrain", "finetune"):
        # weights we exported (``med3d-train export``): ours, with the scans they saw when the card lists them
        ids = card.get("scan_ids")
        return {"kind": "med3d", "encoder": encoder, "scan_ids": None if ids is None else sorted(map(str, ids)),
                "path": str(path)}
    return {"kind": fmt, "encoder": encoder, "scan_ids": None, "path": str(path)}


def _init_card(path: Path) -> dict[str, Any] | None:
    """The card beside ``--init`` weights, or None; a damaged card is a :class:`FinetuneError` naming it."""
    from catalog.card import CardError, find_card

    try:
        return find_card(path)
    except CardError as exc:
        raise FinetuneError(str(exc)) from exc


def _check_leakage(record: dict[str, Any], eval_ids: set[str], init: str, split: str,
                   log: Callable[[str], None]) -> None:
    if record["kind"] == "scratch":
        return
    if record["scan_ids"] is None:
        log(f"warning: --init {init} ({record['kind']} weights) does not record which scans it was trained on; "
            f"whether it saw the {split} scans this run is measured on cannot be checked")
        return
    seen = sorted(eval_ids & set(record["scan_ids"]))
    if seen:
        raise FinetuneError(
            f"--init {init} was trained on {len(seen)} scan(s) of the {split} split this task is measured on: "
            f"{', '.join(seen[:10])}{' ...' if len(seen) > 10 else ''}. Pretrain with --exclude STORE:{split} "
            "(e.g. --exclude data/lits_store:val) or choose another --init")


def _device(cfg: FinetuneConfig, env: DistEnv) -> torch.device:
    try:
        return resolve_device(cfg.device, env)
    except ValueError as exc:
        raise FinetuneError(str(exc)) from exc
    except RuntimeError as exc:
        raise FinetuneError(f"--device {cfg.device!r} is not a device: {exc}; use cpu, cuda or cuda:N") from exc


def _measured_and_validation(task: Task, cfg: FinetuneConfig, env: DistEnv, log: Callable[[str], None]
                             ) -> tuple[Any, Any]:
    """The split the run is measured on (for the leakage check) and the one it validates on while training.

    Validation (the curve in metrics.jsonl, and anything chosen from it) reads ``val`` only: a run measured on
    ``test`` never sees a test case before ``evaluate``. A run measured on ``val`` (liver: the LiTS test labels are
    not public) validates on it too, as the paper's protocol does. Either may be None (no such split)."""
    try:
        evaluation = task.data(cfg, cfg.eval_split)
    except ValueError as exc:
        evaluation = None
        if env.is_main:
            log(f"note: no {cfg.eval_split} split to measure on ({exc})")
    if cfg.eval_split == "val":
        validation = evaluation
    else:
        try:
            validation = task.data(cfg, "val")
        except ValueError:
            validation = None
    if validation is None and env.is_main and cfg.val_every > 0:
        log(f"note: no val split to validate on; training without validation (the {cfg.eval_split} split is "
            "measured by evaluate only)")
    return evaluation, validation


def finetune_stage(cfg: FinetuneConfig, *, resume: bool = False, stop_after: int | None = None,
                   progress: bool = True, log: Callable[[str], None] = print,
                   preprocessing: dict[str, Any] | None = None, record: dict[str, Any] | None = None,
                   report_init: Callable[[LoadReport], None] | None = None) -> StageResult:
    """Train one stage as ``cfg`` says; writes ``cfg.out``/{config.json, checkpoint.pt, metrics.jsonl}.

    ``resume`` continues ``cfg.out/checkpoint.pt`` exactly; without it an existing checkpoint raises
    :class:`FinetuneError`. ``stop_after`` ends after that many steps with a checkpoint (a preemption).
    ``record`` is :func:`init_record` of ``cfg.init`` when the caller has it already (it reads the whole file).
    ``report_init`` receives the weight-loading report (default: its short line through ``log``).
    """
    from model.nets.weights import load_encoder_weights

    task = get_task(cfg.task)
    env = DistEnv.from_environ()
    device = _device(cfg, env)
    created_group = init_distributed(env, device)
    try:
        run_dir = Path(cfg.out)
        ckpt_path = run_dir / CHECKPOINT_NAME
        ckpt = checkpoint_for_resume(cfg, ckpt_path, resume, log, env, runtime=FINETUNE_RUNTIME_FIELDS,
                                     error=FinetuneError)
        train = _train_data(task, cfg)
        evaluation, validation = _measured_and_validation(task, cfg, env, log)
        record = record if record is not None else init_record(cfg.init)
        if ckpt is None and env.is_main and evaluation is not None:
            _check_leakage(record, set(evaluation.scan_ids), cfg.init, cfg.eval_split, log)
        classes, in_chans = task.num_classes(train, cfg), task.in_chans(train, cfg)
        torch.manual_seed(cfg.seed)
        net = build_transfer_net(task.kind(cfg), cfg.encoder, classes, net_options(cfg, in_chans))
        init_report = None
        if ckpt is not None:
            load_model_state(net, ckpt, ckpt_path, error=FinetuneError)
            init_report = ckpt.get("init_report")
        elif record["path"] is not None:
            report = load_encoder_weights(net.encoder, record["path"])
            init_report = report.to_dict()
            if env.is_main:
                (report_init or (lambda r: log(r.short())))(report)
        amp = cfg.amp if cfg.amp is not None else device.type == "cuda"
        net.to(device)
        opt_cfg = cfg.replace(lr=cfg.effective_lr)
        optimizer = make_optimizer(net.parameters(), opt_cfg)
        scheduler = make_scheduler(optimizer, opt_cfg)
        start, summary = 0, {}
        if ckpt is not None:
            start, summary = restore_training_state(ckpt, optimizer, scheduler, ckpt_path, error=FinetuneError)
            if env.is_main:
                log(f"resuming {ckpt_path} at step {start} of {cfg.steps}")
        elif env.is_main:
            log(f"fine-tuning {cfg.encoder} for {cfg.task}"
                f"{'' if cfg.stage == 'main' else f' ({cfg.stage} stage)'} on {len(train.cases)} train cases of "
                f"{cfg.store}, init {record['kind']}, lr {cfg.effective_lr:g}, {cfg.steps} steps")
        end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
        try:
            loader, augment = task.loader(cfg, train, run_dir, start=start, steps=max(end - start, 0), env=env,
                                          progress=progress and env.is_main)
        except CacheSpaceError as exc:  # an input cache that would not fit its disk: refused before writing
            raise FinetuneError(str(exc)) from None
        stepper = FinetuneStepper(net, optimizer, scheduler, loss=cfg.loss, device=device, amp=amp,
                                  compile=cfg.compile, env=env, augment=augment, start_step=start)
        train_ids = list(train.scan_ids)
        if env.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            cfg.write_json(run_dir / CONFIG_FILE)

        def save(step: int) -> None:
            if env.is_main:
                save_checkpoint({
                    "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "step": step, "config": cfg.to_dict(), "rng": rng_state(),
                    "encoder": cfg.encoder, "task": cfg.task, "stage": cfg.stage, "kind": task.kind(cfg),
                    "num_classes": classes, "in_chans": in_chans, "scan_ids": train_ids, "init_scan_ids": record["scan_ids"] or [],
                    "init_kind": record["kind"], "init_report": init_report, "metrics": summary,
                    "preprocessing": preprocessing or {}, "world_size": env.world_size,
                }, ckpt_path)

        try:
            validator = task.validator(cfg, validation, run_dir, device=device, amp=amp) \
                if cfg.val_every > 0 and env.is_main and validation is not None else None
        except CacheSpaceError as exc:
            raise FinetuneError(str(exc)) from None

        def run_validation(step: int) -> dict[str, Any]:
            return validator(net) if validator is not None else {}

        with MetricsLogger(run_dir, enabled=env.is_main, resume_step=start if ckpt is not None else None) as logger:
            summary = run_loop(stepper, loader, start_step=start, total_steps=cfg.steps, stop_after=stop_after,
                               ckpt_every=cfg.ckpt_every, save=save, val_every=cfg.val_every,
                               validate=run_validation if validator is not None or not env.is_main else None,
                               logger=logger,
                               summary=summary, progress=progress, log_every=cfg.log_every)
        return StageResult(net=net, step=max(end, start), run_dir=run_dir, checkpoint=ckpt_path, summary=summary)
    finally:
        if created_group:
            dist.destroy_process_group()


def _train_data(task: Task, cfg: FinetuneConfig) -> Any:
    """The stage's train cases, after its input size is checked against them and the memory
    (:func:`~model.training.finetune_bounds.check_stage_sizes`); every refusal a :class:`FinetuneError`."""
    try:
        train = task.data(cfg, "train")
    except (ValueError, FileNotFoundError) as exc:
        raise FinetuneError(str(exc)) from exc
    check_stage_sizes(cfg, task, train)
    return train


def _check_init_card(record: dict[str, Any], store: str, preprocessing: dict[str, Any],
                     log: Callable[[str], None]) -> None:
    """Compare the ``--init`` weights' card (``OUT.json`` beside the ``.pth``, written by ``med3d-train export``)
    with ``store``'s preprocessing (``preprocessing``: :func:`catalog.card.case_recipe` of a train case) and warn
    through ``log`` when they differ: spacing, intensity rule. Weights without a card say nothing; a damaged
    card is a :class:`FinetuneError` naming it. Called once per :func:`finetune`, before anything is written."""
    from catalog.card import CardError, mismatch_warning

    if record["path"] is None or not DistEnv.from_environ().is_main:
        return
    try:
        warning = mismatch_warning(record["path"], store, preprocessing)
    except CardError as exc:
        raise FinetuneError(str(exc)) from exc
    if warning:
        log(warning)


def finetune(task: str, store: str, out: str, *, stage: str = "both", resume: bool = False,
             stop_after: int | None = None, progress: bool = True, log: Callable[[str], None] = print,
             verbose: bool = False, **options: Any) -> list[StageResult]:
    """Run the transfer recipe of ``task`` (a name of :data:`model.tasks.TASKS`) on ``store`` into ``out``.

    ``stage``: ``both`` (every stage of the task in turn: liver coarse then fine, the others their one stage),
    or one stage's name. ``options`` are :class:`FinetuneConfig` fields (``init``, ``encoder``, ``steps``, ``lr``,
    ``domain``, ``decoder``...); without ``encoder`` the encoder of the ``init`` weights is used (ResNet-10 from
    scratch). A store of the wrong kind for the task is refused before anything is written.

    The ``init`` weights are loaded once per stage, but reported once: one short line (the full one, with every
    dropped key's name, when ``verbose``), and the whole report in ``out/init_report.json``.

    Rank 0 holds ``out/.lock`` from before its first write to the end (:mod:`model.training.run_lock`): a second
    run into ``out`` is a :class:`FinetuneError` naming the lock's pid and host; a stale lock is taken over.
    """
    from catalog import load_catalog, select
    from catalog.card import case_recipe

    spec = get_task(task)
    stages = spec.stages
    if stage == "both":
        chosen = stages
    elif stage in stages:
        chosen = (stage,)
    else:
        raise FinetuneError(f"task {task} has stages {', '.join(stages)} (or both), got {stage!r}")
    # the options' own bounds (types, finite numbers, lr, sides) before the store is read: ValueError naming them
    FinetuneConfig(task=task, store=str(store), out=str(out), stage=chosen[0],
                   **{k: v for k, v in options.items() if not (k == "encoder" and v is None)})
    try:
        spec.check_store(str(store), options)
        options = spec.finetune_options(str(store), dict(options))
    except FileNotFoundError as exc:
        raise FinetuneError(f"{store}: {exc}") from exc
    options.setdefault("measure_split", spec.choose_eval_split(str(store), options))
    options.setdefault("loss", spec.default_loss)
    init = str(options.get("init", "scratch"))
    record = init_record(init)
    if options.get("encoder") is None:
        options["encoder"] = record["encoder"] or "resnet10"
    root = Path(out)
    # the recipe of a labelled train case; classifying tasks need no mask (classify: its table has the splits)
    rows = select(load_catalog(store), split="train" if spec.segmentation else None,
                  labelled=True if spec.segmentation else None, domain=options.get("domain"))
    if rows.empty:
        raise FinetuneError(f"{store}: no ok, labelled train case; check it with `med3d-prep info {store}`")
    preprocessing = case_recipe(store, str(rows["store_path"].iloc[0]))
    _check_init_card(record, str(store), preprocessing, log)
    results = []
    report_init = _report_once(root, log, verbose)
    fresh = not root.exists()
    # Before anything is written: a second run into this folder is refused, a stale lock taken over.
    lock = acquire_run_lock(root, log=log, error=FinetuneError, enabled=DistEnv.from_environ().is_main)
    try:
        for name in chosen:
            stage_dir = root if name == "main" else root / name
            cfg = FinetuneConfig(task=task, store=str(store), out=str(stage_dir), stage=name, **options)
            if DistEnv.from_environ().is_main:
                _train_data(spec, cfg)  # sizes against the data before the run's files are written
                _write_run_file(root, cfg, spec, record, preprocessing)
            results.append(finetune_stage(cfg, resume=resume, stop_after=stop_after, progress=progress, log=log,
                                          record=record, preprocessing=preprocessing, report_init=report_init))
    except FinetuneError:
        # A refusal (weights that saw the measured scans, no such device...) before any checkpoint: the folder
        # this call created holds only its own files, and left behind it would block the corrected re-run.
        if fresh and DistEnv.from_environ().is_main and not any(root.rglob(CHECKPOINT_NAME)):
            shutil.rmtree(root, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            lock.release()
    return results


INIT_REPORT_FILE = "init_report.json"
"""In a run folder: what loading the ``--init`` weights did, key by key (:meth:`LoadReport.to_dict`)."""


def _report_once(root: Path, log: Callable[[str], None], verbose: bool) -> Callable[[LoadReport], None]:
    """A ``report_init`` for :func:`finetune_stage` that logs the first report it gets (every stage loads the
    same weights) and writes it to ``root/init_report.json``; later calls do nothing."""
    done: list[bool] = []

    def report(rep: LoadReport) -> None:
        if done:
            return
        done.append(True)
        root.mkdir(parents=True, exist_ok=True)
        path = root / INIT_REPORT_FILE
        path.write_text(json.dumps(rep.to_dict(), indent=2) + "\n")
        log(str(rep) if verbose else f"{rep.short()} Details in {path} (or --verbose).")

    return report


def _write_run_file(root: Path, cfg: FinetuneConfig, task: Task, record: dict[str, Any],
                    preprocessing: dict[str, Any]) -> None:
    from catalog.redact import redact_url, redact_urls

    root.mkdir(parents=True, exist_ok=True)
    data = redact_urls({"task": cfg.task, "encoder": cfg.encoder, "init": cfg.init, "init_kind": record["kind"],
                        "metric": task.metric, "stages": list(task.stages), "store": cfg.store,
                        "eval_split": cfg.eval_split, "preprocessing": preprocessing, **task.run_info(cfg)})
    path = root / RUN_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        if (old.get("task"), old.get("encoder"), old.get("init")) != (cfg.task, cfg.encoder, redact_url(cfg.init)):
            raise FinetuneError(f"{root} holds a {old.get('task')} run ({old.get('encoder')}, init "
                                f"{old.get('init')}); choose another --out")
    task.write_run_files(root, cfg)
    path.write_text(json.dumps(data, indent=2) + "\n")
