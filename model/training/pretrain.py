"""Training recipes. ``pretrain``: Med3D multi-domain pretraining on a store (one branch per domain).

The recipe assembles the pieces (store index and loader from ``model.data``, encoder and head, optimiser,
schedule, checkpoints, metrics, validation) and hands them to :func:`model.training.loop.run_loop`.

>>> from model.training.config import TrainConfig
>>> from model.training.pretrain import pretrain
>>> result = pretrain(TrainConfig(store="data/store", out="runs/r10", encoder="resnet10", steps=2000))
>>> result = pretrain(TrainConfig(store=("data/store", "data/kits_store"), out="runs/r10x", steps=2000))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from model.training.checkpoint import (CHECKPOINT_NAME, CheckpointError, load_checkpoint, load_latest_checkpoint, previous_path,
                                       load_model_state, restore_training_state, rng_state, save_checkpoint)
from model.training.config import RUNTIME_FIELDS, TrainConfig, config_conflicts
from model.nets.heads import Med3DPretrainNet, MultiBranchHead
from model.evaluation.inference import sliding_window_probs
from model.evaluation.metrics import MetricsLogger, dice_per_class
from model.nets.encoders import create_encoder
from model.training.loop import DistEnv, PretrainStepper, init_distributed, make_optimizer, make_scheduler, \
    resolve_device, run_loop
from model.training.run_lock import acquire_run_lock

__all__ = ["PretrainError", "PretrainResult", "build_pretrain_net", "load_pretrained_encoder", "pretrain",
           "validate"]

CONFIG_FILE = "config.json"


class PretrainError(ValueError):
    """A run cannot start as asked (existing checkpoint, changed config or data); the message says what to do."""


@dataclass
class PretrainResult:
    """What :func:`pretrain` returns: the trained network (on its device), where things were written."""

    net: Med3DPretrainNet
    step: int
    run_dir: Path
    checkpoint: Path
    summary: dict[str, Any] = field(default_factory=dict)
    scan_ids: list[str] = field(default_factory=list)


def build_pretrain_net(encoder: str, classes: Mapping[str, int]) -> Med3DPretrainNet:
    """Encoder ``encoder`` (1 input channel) + one 1×1×1 branch per domain of ``classes`` (domain -> classes)."""
    enc = create_encoder(encoder, in_chans=1)
    return Med3DPretrainNet(enc, MultiBranchHead(enc.out_channels, dict(classes)))


def _val_cases(stores: Sequence[str], classes: Mapping[str, int], excluded: set[str],
               log: Callable[[str], None]) -> list[tuple[str, str, str]]:
    """(domain, store_path, store) of the complete, labelled val cases of the trained domains, excluded scans
    left out (and, over several stores, a scan's copies in later stores: :meth:`StoreIndex.from_stores`)."""
    from model.data import StoreIndex

    try:
        index = StoreIndex.from_stores(stores, split="val", exclude_scan_ids=excluded)
    except ValueError as exc:  # a store built with val_fraction=0 has no val split: train without validation
        log(f"no validation: {exc}")
        return []
    return [(d, c.store_path, index.store_of(c)) for d in index.domains if d in classes for c in index.cases[d]]


def validate(net: Med3DPretrainNet, store: str, cases: Sequence[tuple[str, str] | tuple[str, str, str]],
             cfg: TrainConfig, *, device: torch.device, amp: bool, env: DistEnv = DistEnv()) -> dict[str, Any]:
    """Dice per domain on whole val volumes (sliding window at ``cfg.patch``). ``cases``: (domain, store_path)
    read from ``store``, or (domain, store_path, case_store) read from their own store.

    Returns {"dice": {domain: mean over cases of the case's mean foreground Dice}, "dice_per_class": {domain:
    [mean Dice of each class over the cases where it is defined]}, "mean_dice": mean over domains, "cases":
    {domain: n}}. Under DDP each rank takes every world_size-th case (with rank 0's BN statistics) and the sums
    are all-reduced.
    """
    from model.data import read_volume

    classes = net.head.classes
    domains = sorted({c[0] for c in cases})
    # Per domain: [sum of case fg Dice, cases, per-class Dice sums..., per-class counts...]
    width = 2 + 2 * max(classes.values())
    sums = torch.zeros(len(domains), width, dtype=torch.float64)
    limit = cfg.val_max_cases
    chosen = [tuple(c) for d in domains for c in [x for x in cases if x[0] == d][: limit or None]]
    if env.distributed:
        # DDP copies rank 0's BN running statistics to the other ranks at the start of a training forward, and
        # then every rank updates its copy with its own batch: without this broadcast each rank would validate
        # its share of the cases with a slightly different model than the one rank 0 checkpoints.
        with torch.no_grad():
            for buf in net.buffers():
                dist.broadcast(buf, src=0)
    was_training = net.training
    net.eval()
    try:
        for domain, path, *own in chosen[env.rank:: env.world_size]:
            image, label = read_volume(own[0] if own else store, path, channel=0)
            probs = sliding_window_probs(lambda x, d=domain: net(x, d), torch.from_numpy(image), cfg.patch,
                                         classes[domain], overlap=cfg.val_overlap,
                                         batch=cfg.batch, device=device, amp=amp)
            n = classes[domain]
            dice = dice_per_class(probs[None], torch.from_numpy(label.astype("int64"))[None], n)
            row = sums[domains.index(domain)]
            fg = dice[1:][~torch.isnan(dice[1:])]
            if fg.numel():
                row[0] += fg.mean()
                row[1] += 1
            ok = ~torch.isnan(dice)
            row[2: 2 + n] += torch.where(ok, dice, torch.zeros_like(dice))
            row[2 + n: 2 + 2 * n] += ok.to(torch.float64)
    finally:
        net.train(was_training)
    if env.distributed:
        sums = sums.to(device)
        dist.all_reduce(sums)
        sums = sums.cpu()
    out: dict[str, Any] = {"dice": {}, "dice_per_class": {}, "cases": {}}
    for i, domain in enumerate(domains):
        n = classes[domain]
        row = sums[i].tolist()
        out["dice"][domain] = row[0] / row[1] if row[1] else float("nan")
        out["dice_per_class"][domain] = [s / c if c else float("nan")
                                         for s, c in zip(row[2: 2 + n], row[2 + n: 2 + 2 * n])]
        out["cases"][domain] = int(row[1])
    defined = [v for v in out["dice"].values() if not math.isnan(v)]
    out["mean_dice"] = sum(defined) / len(defined) if defined else float("nan")
    return out


def checkpoint_for_resume(cfg: Any, path: Path, resume: bool, log: Callable[[str], None],
                          env: DistEnv = DistEnv(), *, runtime: frozenset[str] = RUNTIME_FIELDS,
                          error: type[ValueError] = PretrainError) -> dict[str, Any] | None:
    """The checkpoint to resume from (None for a new run), after checking it fits ``cfg`` (a TrainConfig or
    FinetuneConfig; fields in ``runtime`` may differ). Raises ``error`` otherwise. A checkpoint of another world
    size is resumed with a logged note: the run goes on with the new world size's sample stream."""
    if not resume:
        if path.exists() or previous_path(path).exists():
            raise error(f"{path} exists: pass --resume to continue that run, or choose another --out "
                        "(nothing was overwritten)")
        return None
    try:
        ckpt = load_latest_checkpoint(path, log)
    except CheckpointError as exc:
        raise error(str(exc)) from None
    if ckpt is None:
        log(f"--resume: no checkpoint in {path.parent} yet, starting a new run")
        return None
    try:
        saved = type(cfg).from_dict(ckpt["config"])
    except ValueError as exc:  # a value of the wrong type or range ("amp": "no"), an unknown field
        raise error(f"{path}: config: {exc}") from None
    conflicts = config_conflicts(saved, cfg, runtime)
    if conflicts:
        raise error(f"cannot resume {path}: the configuration differs from the checkpoint's in "
                            + "; ".join(conflicts) + ". Resume with the same settings, or start a new --out")
    # Patches depend on the rank and the effective batch on the number of ranks. The same world size resumes
    # bit-exactly; another one (a preempted job restarted on fewer or more nodes) continues from the checkpoint's
    # weights, optimiser and schedule with the sample stream of the new world size from the checkpoint's step on.
    saved_world = ckpt.get("world_size")
    if saved_world is not None and int(saved_world) != env.world_size:
        if env.is_main:
            log(f"--resume: {path} was written by a run of {int(saved_world)} process(es), this one has "
                f"{env.world_size}: continuing at step {int(ckpt['step'])} with a new sample stream (the patches "
                f"of a {env.world_size}-process run, {env.world_size} x batch per step instead of "
                f"{int(saved_world)} x batch); the weights will differ from an uninterrupted "
                f"{int(saved_world)}-process run")
    return ckpt


def world_history(ckpt: Mapping[str, Any] | None, start: int, world_size: int) -> list[list[int]]:
    """[[first step, processes], ...]: the world sizes a run trained with, kept in its checkpoints (a run resumed
    on another number of processes gets a new entry at its resume step)."""
    if ckpt is None:
        return [[0, world_size]]
    history = [list(map(int, h)) for h in ckpt.get("world_history") or [[0, int(ckpt.get("world_size") or 1)]]]
    if history[-1][1] != world_size:
        history.append([start, world_size])
    return history


def pretrain(cfg: TrainConfig, *, resume: bool = False, stop_after: int | None = None, progress: bool = True,
             log: Callable[[str], None] = print) -> PretrainResult:
    """Med3D pretraining as configured by ``cfg``; writes ``cfg.out``/{config.json, checkpoint.pt, metrics.jsonl}.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) it joins the process group (NCCL on CUDA, gloo on CPU), each rank
    reads its own patches, rank 0 writes files. ``resume`` continues from ``cfg.out/checkpoint.pt`` (or starts
    afresh when there is none); without it an existing checkpoint raises :class:`PretrainError`.
    ``stop_after`` ends after that many steps with a checkpoint, as a preempted job would. While it runs, rank 0
    holds ``cfg.out/.lock`` (:mod:`model.training.run_lock`): a second run into the folder is a :class:`PretrainError`.
    """
    env = DistEnv.from_environ()
    device = _device(cfg, env)
    # Before anything is written: a second run into this folder is refused, a stale lock taken over.
    lock = acquire_run_lock(cfg.out, log=log, error=PretrainError, enabled=env.is_main)
    created_group = False
    try:
        created_group = init_distributed(env, device)
        run_dir = Path(cfg.out)
        ckpt_path = run_dir / CHECKPOINT_NAME
        ckpt = checkpoint_for_resume(cfg, ckpt_path, resume, log, env)
        index, excluded = _train_index(cfg, ckpt, ckpt_path, env, log)
        scan_ids = list(index.scan_ids)
        classes = {d: int(index.num_classes[d]) for d in index.domains}
        net, init_report = _network(cfg, classes, ckpt, ckpt_path, env, log)
        amp = cfg.amp if cfg.amp is not None else device.type == "cuda"
        net.to(device)
        optimizer = make_optimizer(net.parameters(), cfg)
        scheduler = make_scheduler(optimizer, cfg)
        start = 0
        summary: dict[str, Any] = {}
        if ckpt is not None:
            start, summary = restore_training_state(ckpt, optimizer, scheduler, ckpt_path, error=PretrainError)
            init_report = ckpt.get("init_report")
            if env.is_main:
                log(f"resuming {ckpt_path} at step {start} of {cfg.steps}")
        worlds = world_history(ckpt, start, env.world_size)
        stepper = PretrainStepper(net, optimizer, scheduler, loss=cfg.loss, device=device, amp=amp,
                                  compile=cfg.compile, env=env)
        if env.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            cfg.write_json(run_dir / CONFIG_FILE)

        def save(step: int) -> None:
            if not env.is_main:
                return
            save_checkpoint({
                "model": net.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "step": step, "config": cfg.to_dict(), "rng": rng_state(), "encoder": cfg.encoder,
                "domains": list(classes), "classes": classes, "scan_ids": scan_ids, "excluded": sorted(excluded),
                "excluded_in_store": list(index.excluded), "duplicate_scan_ids": list(index.duplicates),
                "index": index.to_record(),
                "metrics": summary, "init_report": init_report, "world_size": env.world_size,
                "world_history": worlds,
            }, ckpt_path)

        val_cases = _val_cases(cfg.store, classes, excluded, log) if cfg.val_every > 0 else []

        def run_validation(step: int) -> dict[str, Any]:
            return validate(net, index.store, val_cases, cfg, device=device, amp=amp, env=env)

        end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
        loader = _loader(cfg, index, start, end, env)
        # A resumed run repeats the steps after its checkpoint: their records from before the interruption go.
        resume_step = start if ckpt is not None else None
        with MetricsLogger(run_dir, enabled=env.is_main, resume_step=resume_step) as logger:
            summary = run_loop(
                stepper, loader, start_step=start, total_steps=cfg.steps, stop_after=stop_after,
                ckpt_every=cfg.ckpt_every, save=save, val_every=cfg.val_every,
                validate=run_validation if val_cases else None, logger=logger, summary=summary,
                progress=progress, log_every=cfg.log_every,
            )
        return PretrainResult(net=net, step=max(end, start), run_dir=run_dir, checkpoint=ckpt_path,
                              summary=summary, scan_ids=scan_ids)
    finally:
        if created_group:
            dist.destroy_process_group()
        if lock is not None:
            lock.release()


def _loader(cfg: TrainConfig, index: Any, start: int, end: int, env: DistEnv) -> Any:
    """This rank's batches of steps ``start`` to ``end`` (a pure function of the seed and the step)."""
    from model.data import PatchConfig, make_loader

    patch_cfg = PatchConfig(patch=cfg.patch, batch=cfg.batch, fg_fraction=cfg.fg_fraction,
                            domain_sampling=cfg.domain_sampling, channel=cfg.channel, seed=cfg.seed)
    return make_loader(index.store, index, patch_cfg, start_step=start, num_steps=max(end - start, 0),
                       rank=env.rank, world_size=env.world_size, workers=cfg.workers)


def _device(cfg: TrainConfig, env: DistEnv) -> torch.device:
    try:
        return resolve_device(cfg.device, env)
    except ValueError as exc:  # CUDA asked for where there is none
        raise PretrainError(str(exc)) from exc
    except RuntimeError as exc:  # not a device name ("gpu")
        raise PretrainError(f"--device {cfg.device!r} is not a device: {exc}; use cpu, cuda or cuda:N") from exc


def _train_index(cfg: TrainConfig, ckpt: dict[str, Any] | None, ckpt_path: Path, env: DistEnv,
                 log: Callable[[str], None]) -> tuple[Any, set[str]]:
    """The train cases of the stores (minus ``--exclude``), the same as the resumed run's, said once."""
    from model.data import StoreIndex, parse_exclude

    try:
        excluded = parse_exclude(cfg.exclude) if cfg.exclude else set()
        index = StoreIndex.from_stores(cfg.store, split="train", exclude_scan_ids=excluded)
    except (ValueError, FileNotFoundError) as exc:  # no catalog, empty split, bad --exclude spec
        raise PretrainError(str(exc)) from exc
    if ckpt is not None and list(ckpt.get("scan_ids", [])) != list(index.scan_ids):
        raise PretrainError(f"cannot resume {ckpt_path}: the store's train cases differ from those the run "
                            "started with (store rebuilt or --exclude changed)")
    if env.is_main:
        classes = {d: int(index.num_classes[d]) for d in index.domains}
        note = f"; {len(index.excluded)} of its scan(s) kept out by --exclude" if cfg.exclude else ""
        where = f" of {len(index.stores)} stores" if len(index.stores) > 1 else ""
        log(f"training {cfg.encoder} on {len(index)} train cases in {len(index.domains)} domains{where} "
            f"({', '.join(f'{d}:{classes[d]} classes' for d in index.domains)}){note}")
        if index.duplicates:
            log(f"{len(index.duplicates)} scan(s) are in more than one store under the same scan id; each is "
                f"trained once, from the first store that holds it: {', '.join(index.duplicates[:5])}"
                f"{'...' if len(index.duplicates) > 5 else ''}")
    return index, excluded


def _network(cfg: TrainConfig, classes: dict[str, int], ckpt: dict[str, Any] | None, ckpt_path: Path,
             env: DistEnv, log: Callable[[str], None]) -> tuple[nn.Module, dict[str, Any] | None]:
    """The multi-branch network: the checkpoint's weights when resuming, else ``--init``'s encoder (its load
    report returned) or fresh ones."""
    torch.manual_seed(cfg.seed)
    net = build_pretrain_net(cfg.encoder, classes)
    if ckpt is not None:
        load_model_state(net, ckpt, ckpt_path, error=PretrainError)
        return net, None
    if cfg.init == "scratch":
        return net, None
    from model.nets.weights import load_encoder_weights

    report = load_encoder_weights(net.encoder, cfg.init)
    if env.is_main:  # the whole report, every dropped key, is the checkpoint's init_report
        log(report.short())
    return net, report.to_dict()


def load_pretrained_encoder(checkpoint: str | Path) -> tuple[nn.Module, Any]:
    """The encoder of one of our checkpoints (architecture from its config, input channels as it recorded them:
    a ``--channels all`` fine-tuning run has several) and the load report."""
    from model.nets.weights import load_encoder_weights

    ckpt = load_checkpoint(checkpoint)
    name = ckpt.get("encoder") or TrainConfig.from_dict(ckpt["config"]).encoder
    encoder = create_encoder(name, in_chans=int(ckpt.get("in_chans", 1)))
    report = load_encoder_weights(encoder, ckpt)
    return encoder, report
