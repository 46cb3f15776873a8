"""Transfer recipes: ``finetune`` of a task (:class:`~model.task_api.Task`: the paper's liver, lung, nodule of
Med3D § 3.3; ``seg`` and ``classify`` on any store; a plug-in's), on the pretraining machinery (checkpoints, exact
resume, metrics log, AMP, DDP). What differs between tasks (stages, head, classes, data, validation) is asked of
the task object, which the caller gives (the command line finds it by name: :func:`model.tasks.base.get_task`).

A run folder (written and read by :mod:`model.run_folder`)::

    RUN/finetune.json         task, encoder, init and its kind, metric, stages, preprocessing recipe of the store
    RUN/config.json, checkpoint.pt, metrics.jsonl          one-stage tasks
    RUN/coarse/..., RUN/fine/...                            liver: one folder per stage (same files)
    RUN/eval/<split>/...                                    written by ``med3d-train evaluate``
    RUN/.lock                                               while a run writes the folder (model.training.run_lock)

>>> from model.tasks.base import get_task
>>> from model.training.finetune import finetune
>>> finetune(get_task("liver"), "data/lits_store", "runs/liver", init="runs/pretrain", steps=2000)
"""

from __future__ import annotations

import dataclasses
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
from model.run_folder import net_record, write_run_file
from model.task_api import FinetuneError, Task
from model.training.checkpoint import (CHECKPOINT_NAME, load_model_state, restore_training_state, rng_state,
                                       save_checkpoint)
from model.training.finetune_bounds import check_stage_sizes
from model.training.finetune_config import EARLIER_FIELDS, FINETUNE_RUNTIME_FIELDS, FinetuneConfig
from model.training.finetune_init import check_init_card, check_leakage, init_record
from model.training.finetune_step import FinetuneStepper
from model.training.loop import DistEnv, init_distributed, make_optimizer, make_scheduler, resolve_device, run_loop
from model.training.pretrain import CONFIG_FILE, checkpoint_for_resume
from model.training.run_lock import acquire_run_lock

__all__ = ["INIT_REPORT_FILE", "StageResult", "finetune", "finetune_stage", "measured_split"]


@dataclass
class StageResult:
    net: TransferNet
    step: int
    run_dir: Path
    checkpoint: Path
    summary: dict[str, Any] = field(default_factory=dict)


def measured_split(task: Task, cfg: FinetuneConfig) -> str:
    """The split ``cfg``'s run is measured on: its ``measure_split``, else the task's ``eval_split``."""
    return cfg.measure_split or task.eval_split


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
    split = measured_split(task, cfg)
    try:
        evaluation = task.data(cfg, split)
    except ValueError as exc:
        evaluation = None
        if env.is_main:
            log(f"note: no {split} split to measure on ({exc})")
    if split == "val":
        validation = evaluation
    else:
        try:
            validation = task.data(cfg, "val")
        except ValueError:
            validation = None
    if validation is None and env.is_main and cfg.val_every > 0:
        log(f"note: no val split to validate on; training without validation (the {split} split is "
            "measured by evaluate only)")
    return evaluation, validation


@dataclass
class _Net:
    """A stage's network and what its checkpoints record of it."""

    net: TransferNet
    record: dict[str, Any]
    init_report: dict[str, Any] | None


def _build_net(task: Task, cfg: FinetuneConfig, train: Any, ckpt: dict[str, Any] | None, ckpt_path: Path,
               record: dict[str, Any], report: Callable[[LoadReport], None] | None) -> _Net:
    """The stage's network: from the checkpoint when resuming, else with the ``--init`` encoder weights loaded
    (their report given to ``report``, on the main process only)."""
    from model.nets.weights import load_encoder_weights

    head, classes = task.head(cfg), task.num_classes(train, cfg)
    options = task.net_options(cfg, task.in_chans(train, cfg))
    torch.manual_seed(cfg.seed)
    net = build_transfer_net(head, cfg.encoder, classes, options)
    init_report = None
    if ckpt is not None:
        load_model_state(net, ckpt, ckpt_path, error=FinetuneError)
        init_report = ckpt.get("init_report")
    elif record["path"] is not None:
        loaded = load_encoder_weights(net.encoder, record["path"])
        init_report = loaded.to_dict()
        if report is not None:
            report(loaded)
    return _Net(net, net_record(head, cfg.encoder, classes, options), init_report)


def _saver(cfg: FinetuneConfig, built: _Net, optimizer: Any, scheduler: Any, ckpt_path: Path, *, train_ids: list[str],
           record: dict[str, Any], summary: dict[str, Any], preprocessing: dict[str, Any] | None,
           env: DistEnv) -> Callable[[int], None]:
    """``save(step)``: the stage's checkpoint (main process only). ``net`` is the network record the network is
    rebuilt from (:func:`model.run_folder.load_stage`); ``kind``, ``num_classes`` and ``in_chans`` repeat it for
    readers of the earlier format."""

    def save(step: int) -> None:
        if not env.is_main:
            return
        net = built.record
        save_checkpoint({
            "model": built.net.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "step": step, "config": cfg.to_dict(), "rng": rng_state(),
            "encoder": cfg.encoder, "task": cfg.task, "stage": cfg.stage, "net": net, "kind": net["head"],
            "num_classes": net["num_classes"], "in_chans": net["options"]["in_chans"], "scan_ids": train_ids,
            "init_scan_ids": record["scan_ids"] or [], "init_kind": record["kind"],
            "init_report": built.init_report, "metrics": summary, "preprocessing": preprocessing or {},
            "world_size": env.world_size,
        }, ckpt_path)

    return save


def _validator(task: Task, cfg: FinetuneConfig, validation: Any, run_dir: Path, net: TransferNet, *,
               device: torch.device, amp: bool, env: DistEnv) -> Callable[[int], dict[str, Any]] | None:
    """``validate(step)`` for the loop: the task's validator on the main process (None when the run does not
    validate); other processes get one that returns nothing, so every rank reaches the same barriers."""
    try:
        validator = task.validator(cfg, validation, run_dir, device=device, amp=amp) \
            if cfg.val_every > 0 and env.is_main and validation is not None else None
    except CacheSpaceError as exc:
        raise FinetuneError(str(exc)) from None
    if validator is None and env.is_main:
        return None
    return lambda step: validator(net) if validator is not None else {}


def _loader(task: Task, cfg: FinetuneConfig, train: Any, run_dir: Path, *, start: int, end: int, env: DistEnv,
            progress: bool) -> tuple[Any, Any]:
    try:
        return task.loader(cfg, train, run_dir, start=start, steps=max(end - start, 0), env=env,
                           progress=progress and env.is_main)
    except CacheSpaceError as exc:  # an input cache that would not fit its disk: refused before writing
        raise FinetuneError(str(exc)) from None


def finetune_stage(task: Task, cfg: FinetuneConfig, *, resume: bool = False, stop_after: int | None = None,
                   progress: bool = True, log: Callable[[str], None] = print,
                   preprocessing: dict[str, Any] | None = None, record: dict[str, Any] | None = None,
                   report_init: Callable[[LoadReport], None] | None = None) -> StageResult:
    """Train one stage of ``task`` as ``cfg`` says; writes ``cfg.out``/{config.json, checkpoint.pt, metrics.jsonl}.

    ``resume`` continues ``cfg.out/checkpoint.pt`` exactly; without it an existing checkpoint raises
    :class:`FinetuneError`. ``stop_after`` ends after that many steps with a checkpoint (a preemption).
    ``record`` is :func:`~model.training.finetune_init.init_record` of ``cfg.init`` when the caller has it already
    (it reads the whole file). ``report_init`` receives the weight-loading report (default: its short line
    through ``log``).
    """
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
            check_leakage(record, set(evaluation.scan_ids), cfg.init, measured_split(task, cfg), log)
        built = _build_net(task, cfg, train, ckpt, ckpt_path, record,
                           (report_init or (lambda r: log(r.short()))) if env.is_main else None)
        net = built.net
        amp = cfg.amp if cfg.amp is not None else device.type == "cuda"
        net.to(device)
        opt_cfg = cfg.replace(lr=cfg.effective_lr)
        optimizer = make_optimizer(net.parameters(), opt_cfg)
        scheduler = make_scheduler(optimizer, opt_cfg)
        start, summary = 0, {}
        if ckpt is not None:
            start, summary = restore_training_state(ckpt, optimizer, scheduler, ckpt_path, error=FinetuneError)
        if env.is_main:
            log(f"resuming {ckpt_path} at step {start} of {cfg.steps}" if ckpt is not None else
                f"fine-tuning {cfg.encoder} for {cfg.task}{'' if cfg.stage == 'main' else f' ({cfg.stage} stage)'} "
                f"on {len(train.cases)} train cases of {cfg.store}, init {record['kind']}, lr {cfg.effective_lr:g}, "
                f"{cfg.steps} steps")
        end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
        loader, augment = _loader(task, cfg, train, run_dir, start=start, end=end, env=env, progress=progress)
        stepper = FinetuneStepper(net, optimizer, scheduler, loss=cfg.loss, device=device, amp=amp,
                                  compile=cfg.compile, env=env, augment=augment, start_step=start)
        if env.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            cfg.write_json(run_dir / CONFIG_FILE)
        save = _saver(cfg, built, optimizer, scheduler, ckpt_path, train_ids=list(train.scan_ids), record=record,
                      summary=summary, preprocessing=preprocessing, env=env)
        validate = _validator(task, cfg, validation, run_dir, net, device=device, amp=amp, env=env)
        with MetricsLogger(run_dir, enabled=env.is_main, resume_step=start if ckpt is not None else None) as logger:
            summary = run_loop(stepper, loader, start_step=start, total_steps=cfg.steps, stop_after=stop_after,
                               ckpt_every=cfg.ckpt_every, save=save, val_every=cfg.val_every, validate=validate,
                               logger=logger, summary=summary, progress=progress, log_every=cfg.log_every)
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


def _stages(task: Task, stage: str) -> tuple[str, ...]:
    if stage == "both":
        return task.stages
    if stage in task.stages:
        return (stage,)
    raise FinetuneError(f"task {task.name} has stages {', '.join(task.stages)} (or both), got {stage!r}")


def _own_options(task: Task, options: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """``options`` without the options of other tasks that every task took before tasks owned their options
    (:data:`~model.training.finetune_config.EARLIER_FIELDS`): said through ``log`` and dropped, as they changed
    nothing; ``channels="all"`` for a task that reads one channel is refused, as it was."""
    own = {f.name for f in dataclasses.fields(task.config_type)}
    other = sorted(k for k in options if k in EARLIER_FIELDS and k not in own)
    if options.get("channels") == "all" and "channels" in other:
        raise ValueError(f"channels all: task {task.name!r} reads one channel; finetune seg and classify take every "
                         "channel")
    if other and DistEnv.from_environ().is_main:
        log(f"note: {', '.join(other)}: not option(s) of task {task.name}, ignored")
    return {k: v for k, v in options.items() if k not in other}


def _run_options(task: Task, store: str, out: str, first: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` checked (their own bounds first: ValueError naming them, before the store is read), the store
    checked for the task (:class:`~model.task_api.TaskStoreError`) and completed: the split measured on, the
    loss, the encoder of the ``--init`` weights when none is given."""
    task.config(store=str(store), out=str(out), stage=first,
                **{k: v for k, v in options.items() if not (k == "encoder" and v is None)})
    try:
        task.check_store(str(store), options)
        options = task.finetune_options(str(store), dict(options))
    except FileNotFoundError as exc:
        raise FinetuneError(f"{store}: {exc}") from exc
    options.setdefault("measure_split", task.choose_eval_split(str(store), options))
    options.setdefault("loss", task.default_loss)
    return options


def _preprocessing(task: Task, store: str, domain: str | None) -> dict[str, Any]:
    """The preprocessing recipe of a labelled train case (classifying tasks need no mask: classify's table has
    the splits)."""
    from catalog import load_catalog, select
    from catalog.card import case_recipe

    rows = select(load_catalog(store), split="train" if task.segmentation else None,
                  labelled=True if task.segmentation else None, domain=domain)
    if rows.empty:
        raise FinetuneError(f"{store}: no ok, labelled train case; check it with `med3d-prep info {store}`")
    return case_recipe(store, str(rows["store_path"].iloc[0]))


def finetune(task: Task, store: str, out: str, *, stage: str = "both", resume: bool = False,
             stop_after: int | None = None, progress: bool = True, log: Callable[[str], None] = print,
             verbose: bool = False, **options: Any) -> list[StageResult]:
    """Run the transfer recipe of ``task`` on ``store`` into ``out``.

    ``stage``: ``both`` (every stage of the task in turn: liver coarse then fine, the others their one stage),
    or one stage's name. ``options`` are fields of the task's config (``init``, ``encoder``, ``steps``, ``lr``,
    ``domain``, ``decoder``...); without ``encoder`` the encoder of the ``init`` weights is used (ResNet-10 from
    scratch). A store of the wrong kind for the task is refused before anything is written.

    The ``init`` weights are loaded once per stage, but reported once: one short line (the full one, with every
    dropped key's name, when ``verbose``), and the whole report in ``out/init_report.json``.

    Rank 0 holds ``out/.lock`` from before its first write to the end (:mod:`model.training.run_lock`): a second
    run into ``out`` is a :class:`FinetuneError` naming the lock's pid and host; a stale lock is taken over.
    """
    chosen = _stages(task, stage)
    options = _run_options(task, store, out, chosen[0], _own_options(task, options, log))
    record = init_record(str(options.get("init", "scratch")))
    if options.get("encoder") is None:
        options["encoder"] = record["encoder"] or "resnet10"
    root = Path(out)
    preprocessing = _preprocessing(task, str(store), options.get("domain"))
    check_init_card(record, str(store), preprocessing, log)
    results = []
    report_init = _report_once(root, log, verbose)
    fresh = not root.exists()
    main = DistEnv.from_environ().is_main
    # Before anything is written: a second run into this folder is refused, a stale lock taken over.
    lock = acquire_run_lock(root, log=log, error=FinetuneError, enabled=main)
    try:
        for name in chosen:
            cfg = task.config(store=str(store), out=str(root if name == "main" else root / name), stage=name,
                              **options)
            if main:
                _train_data(task, cfg)  # sizes against the data before the run's files are written
                write_run_file(root, cfg, task, record, preprocessing)
            results.append(finetune_stage(task, cfg, resume=resume, stop_after=stop_after, progress=progress,
                                          log=log, record=record, preprocessing=preprocessing,
                                          report_init=report_init))
    except FinetuneError:
        # A refusal (weights that saw the measured scans, no such device...) before any checkpoint: the folder
        # this call created holds only its own files, and left behind it would block the corrected re-run.
        if fresh and main and not any(root.rglob(CHECKPOINT_NAME)):
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
