"""The training loop and the pretrain recipe: learning, exact resume, branch isolation, exclusion, DDP."""

from __future__ import annotations

import copy
import math
import os
import socket
from pathlib import Path

import pytest
import torch

from model.training.checkpoint import load_checkpoint
from model.data import PatchConfig, StoreIndex, make_loader
from model.evaluation.metrics import read_metrics
from model.evaluation.inference import sliding_window_probs, tile_starts
from model.training.pretrain import PretrainError, build_pretrain_net, pretrain, validate
from model.training.loop import DistEnv, PretrainStepper, make_optimizer, make_scheduler, segmentation_loss, soft_dice_loss


@pytest.fixture(scope="module")
def fixed_batches(tiny_store: str) -> dict[str, dict]:
    """One foreground-rich batch per domain, drawn with a seed the training runs do not use."""
    index = StoreIndex.from_store(tiny_store, split="train")
    cfg = PatchConfig(patch=(24, 24, 24), batch=2, fg_fraction=1.0, seed=1234)
    out: dict[str, dict] = {}
    for batch in make_loader(tiny_store, index, cfg, start_step=0, num_steps=100, workers=0):
        out.setdefault(batch["domain"], batch)
        if len(out) == len(index.domains):
            return out
    raise AssertionError("a domain never came up in 100 steps")


def eval_losses(net: torch.nn.Module, batches: dict[str, dict], train_mode: bool) -> dict[str, float]:
    """Loss per domain on fixed batches, on a copy so running BN statistics are not disturbed."""
    m = copy.deepcopy(net).train(train_mode)
    with torch.no_grad():
        return {d: float(segmentation_loss(m(b["image"], d), b["label"])) for d, b in batches.items()}


def train_losses(run_dir: Path) -> dict[int, float]:
    rows = read_metrics(run_dir, "train")
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), f"a step was logged twice: {steps}"
    return {r["step"]: r["loss"] for r in rows}


def test_pretrain_lowers_loss_on_fixed_batch_of_every_domain(tmp_path, fast_config, fixed_batches):
    cfg = fast_config(tmp_path / "run", steps=20, scheduler="constant")
    index = StoreIndex.from_stores(cfg.store, split="train")
    torch.manual_seed(cfg.seed)
    before_net = build_pretrain_net(cfg.encoder, index.num_classes)  # the run's initial weights (same seed)
    before = eval_losses(before_net, fixed_batches, train_mode=True)

    result = pretrain(cfg, progress=False)

    assert result.step == 20
    assert set(result.summary["steps_per_domain"]) == {"alpha", "beta"}
    after = eval_losses(result.net, fixed_batches, train_mode=True)
    after_eval = eval_losses(result.net, fixed_batches, train_mode=False)
    for d in before:
        assert after[d] < 0.7 * before[d], (d, before[d], after[d])
        assert after_eval[d] < 0.7 * before[d], (d, before[d], after_eval[d])
    metrics = read_metrics(cfg.out, "train")
    assert [r["step"] for r in metrics] == list(range(1, 21))
    for key in ("domain", "loss", "lr", "patches_per_s", "data_wait_s", "step_s", "time"):
        assert key in metrics[0]


def test_resume_continues_exactly(tmp_path, fast_config):
    kw = dict(steps=6, ckpt_every=3, scheduler="poly", batch=1)
    full = pretrain(fast_config(tmp_path / "full", **kw), progress=False)

    cfg = fast_config(tmp_path / "split", **kw)
    first = pretrain(cfg, stop_after=3, progress=False)
    assert first.step == 3
    assert load_checkpoint(first.checkpoint)["step"] == 3
    resumed = pretrain(cfg, resume=True, progress=False)
    assert resumed.step == 6

    a, b = train_losses(tmp_path / "full"), train_losses(tmp_path / "split")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-6, (step, a[step], b[step])
    sa, sb = full.net.state_dict(), resumed.net.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-6, msg=k)
    lrs = [r["lr"] for r in read_metrics(tmp_path / "split", "train")]
    assert lrs == [r["lr"] for r in read_metrics(tmp_path / "full", "train")]
    assert lrs[0] == pytest.approx(1e-3) and all(a > b > 0 for a, b in zip(lrs, lrs[1:]))  # poly, per step
    ca, cb = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
    assert ca["metrics"]["steps_per_domain"] == cb["metrics"]["steps_per_domain"]
    assert ca["scheduler"]["last_epoch"] == cb["scheduler"]["last_epoch"] == 6


def test_existing_checkpoint_needs_resume_and_same_config(tmp_path, fast_config):
    cfg = fast_config(tmp_path / "run", steps=2)
    pretrain(cfg, progress=False)
    with pytest.raises(PretrainError, match="--resume"):
        pretrain(cfg, progress=False)
    with pytest.raises(PretrainError, match="lr: checkpoint 0.001, now 0.01"):
        pretrain(cfg.replace(lr=1e-2), resume=True, progress=False)
    with pytest.raises(PretrainError, match="steps"):  # poly's rate depends on the total: no extension
        pretrain(cfg.replace(steps=4), resume=True, progress=False)
    # Runtime fields may change; a finished run resumes as a no-op.
    again = pretrain(cfg.replace(workers=1, ckpt_every=7), resume=True, progress=False)
    assert again.step == 2


@pytest.mark.parametrize("optimizer,weight_decay", [("adam", 0.0), ("adam", 0.1), ("sgd", 0.1)])
def test_a_step_updates_only_its_own_branch(optimizer, weight_decay, fast_config, tmp_path):
    cfg = fast_config(tmp_path, optimizer=optimizer, weight_decay=weight_decay, patch=(16, 16, 16), batch=1)
    torch.manual_seed(0)
    net = build_pretrain_net("resnet10", {"alpha": 2, "beta": 3})
    opt = make_optimizer(net.parameters(), cfg)
    stepper = PretrainStepper(net, opt, make_scheduler(opt, cfg), loss="ce+dice", device=torch.device("cpu"),
                              amp=False)
    x = torch.randn(1, 1, 16, 16, 16)
    y = (x[:, 0] > 1).long()
    start = copy.deepcopy(net.state_dict())
    for _ in range(2):  # twice: Adam's and SGD's momentum must not carry anything into the idle branch
        stepper(x, y, "alpha")
    now = net.state_dict()
    for k in start:
        if k.startswith("head.branches.beta."):
            assert torch.equal(start[k], now[k]), f"{k} moved on alpha batches"
        elif k.startswith(("head.branches.alpha.", "encoder.conv1.", "encoder.layer4.0.conv2.")):
            assert not torch.equal(start[k], now[k]), f"{k} did not learn"
    beta = list(net.head.branches["beta"].parameters())
    assert all(p.grad is None for p in beta)
    assert all(p not in opt.state or not opt.state[p] for p in beta)
    stepper(x, (x[:, 0] > 1).long() * 2, "beta")
    assert not torch.equal(start["head.branches.beta.weight"], net.state_dict()["head.branches.beta.weight"])


def test_checkpoint_records_scans_and_excludes_other_store(tmp_path, fast_config, other_store):
    from catalog import load_catalog, select

    cfg = fast_config(tmp_path / "run", steps=1, exclude=(f"{other_store}:train", other_store))
    result = pretrain(cfg, progress=False)
    ckpt = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    train = set(select(load_catalog(cfg.store[0]), split="train")["scan_id"])
    other = set(load_catalog(other_store)["scan_id"])
    assert len(other) == 2 and other <= train
    assert set(ckpt["scan_ids"]) == train - other
    assert set(ckpt["excluded"]) == other
    assert ckpt["excluded_in_store"] == sorted(other)
    assert ckpt["classes"] == {"alpha": 2, "beta": 3} and ckpt["domains"] == ["alpha", "beta"]
    assert ckpt["step"] == 1 and ckpt["encoder"] == "resnet10"
    assert ckpt["config"]["exclude"] == [f"{other_store}:train", other_store]
    assert {"model", "optimizer", "scheduler", "rng", "metrics"} <= set(ckpt)


def test_pretrain_init_loads_encoder_weights(tmp_path, fast_config):
    donor = pretrain(fast_config(tmp_path / "donor", steps=1), progress=False)
    logs: list[str] = []
    cfg = fast_config(tmp_path / "run", steps=1, init=str(donor.checkpoint), seed=5, lr=1e-12, scheduler="constant")
    pretrain(cfg, progress=False, log=logs.append)
    assert any("Loaded" in line and "med3d" in line for line in logs), logs
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["init_report"]["source_format"] == "med3d"
    # lr ~ 0: the conv weights are still the donor's (BN running stats move with any forward).
    torch.testing.assert_close(ckpt["model"]["encoder.conv1.weight"], donor.net.encoder.conv1.weight.detach(),
                               rtol=0, atol=1e-8)


def test_loss_functions_on_known_inputs():
    labels = torch.zeros(1, 2, 2, 2, dtype=torch.long)
    labels[0, 0] = 1
    perfect = torch.nn.functional.one_hot(labels, 2).movedim(-1, 1).float() * 100
    assert soft_dice_loss(perfect, labels).item() == pytest.approx(0.0, abs=1e-6)
    assert segmentation_loss(perfect, labels).item() == pytest.approx(0.0, abs=1e-6)
    flat = torch.zeros(1, 2, 2, 2, 2)
    # softmax 0.5 everywhere, 4 of 8 voxels foreground: Dice = 2·2 / (4 + 4) = 0.5
    assert soft_dice_loss(flat, labels).item() == pytest.approx(0.5, abs=1e-5)
    assert segmentation_loss(flat, labels, "ce+dice").item() == pytest.approx(math.log(2) + 0.5, abs=1e-5)


def test_tile_starts_cover_the_axis():
    assert tile_starts(20, 32, 0.25) == [0]
    assert tile_starts(32, 32, 0.25) == [0]
    starts = tile_starts(100, 32, 0.25)
    assert starts[0] == 0 and starts[-1] == 68
    assert all(b - a <= 24 for a, b in zip(starts, starts[1:]))


def test_sliding_window_matches_single_pass_and_validates(tiny_store, fast_config, tmp_path):
    torch.manual_seed(0)
    net = build_pretrain_net("resnet10", {"alpha": 2, "beta": 3}).eval()
    image = torch.randn(20, 22, 18)
    whole = sliding_window_probs(lambda x: net(x, "beta"), image, (24, 24, 24), 3)
    padded = torch.zeros(1, 1, 24, 24, 24)
    padded[0, 0, :20, :22, :18] = image
    with torch.no_grad():
        ref = net(padded, "beta").softmax(1)[0, :, :20, :22, :18]
    torch.testing.assert_close(whole, ref, rtol=1e-5, atol=1e-6)
    tiled = sliding_window_probs(lambda x: net(x, "alpha"), torch.randn(40, 30, 26), (24, 24, 24), 2, overlap=0.5,
                                 batch=3)
    # a box gives the same probabilities as the whole volume wherever the box's tiles see the same context
    vol = torch.randn(30, 30, 30)
    boxed = sliding_window_probs(lambda x: net(x, "alpha"), vol, (24, 24, 24), 2, box=((3, 4, 5), (27, 28, 29)))
    assert boxed.shape == (2, 24, 24, 24)
    with torch.no_grad():
        ref_box = net(vol[3:27, 4:28, 5:29][None, None], "alpha").softmax(1)[0]
    torch.testing.assert_close(boxed, ref_box, rtol=1e-5, atol=1e-6)
    assert tiled.shape == (2, 40, 30, 26)
    torch.testing.assert_close(tiled.sum(0), torch.ones(40, 30, 26))

    index = StoreIndex.from_store(tiny_store, split="val")
    cases = [(d, c.store_path) for d in index.domains for c in index.cases[d]]
    out = validate(net, tiny_store, cases, fast_config(tmp_path), device=torch.device("cpu"), amp=False)
    assert out["cases"] == {d: len(index.cases[d]) for d in index.domains}
    assert len(out["dice_per_class"]["beta"]) == 3
    assert all(0.0 <= v <= 1.0 for v in out["dice"].values())
    assert not net.training


def test_validation_is_logged(tmp_path, fast_config):
    cfg = fast_config(tmp_path / "run", steps=2, val_every=1, val_max_cases=1)
    pretrain(cfg, progress=False)
    val = read_metrics(cfg.out, "val")
    assert [r["step"] for r in val] == [1, 2]
    assert set(val[0]["dice"]) == {"alpha", "beta"} and val[0]["cases"] == {"alpha": 1, "beta": 1}
    assert load_checkpoint(Path(cfg.out) / "checkpoint.pt")["metrics"]["val"]["step"] == 2


def test_dist_env_reads_torchrun_variables():
    env = DistEnv.from_environ({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert (env.rank, env.world_size, env.local_rank, env.distributed, env.is_main) == (3, 4, 1, True, False)
    assert not DistEnv.from_environ({}).distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg_dict: dict, out: str) -> None:
    os.environ.update({"WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from model.training.config import TrainConfig

    result = pretrain(TrainConfig.from_dict(cfg_dict), progress=False, log=lambda s: None)
    torch.save({k: v.clone() for k, v in result.net.state_dict().items()}, Path(out) / f"rank{rank}.pt")


@pytest.mark.slow
def test_ddp_on_cpu_two_processes(tmp_path, fast_config):
    import torch.multiprocessing as mp

    cfg = fast_config(tmp_path / "run", steps=3, patch=(16, 16, 16), batch=1, ckpt_every=2)
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg.to_dict(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    torch.manual_seed(cfg.seed)
    init = build_pretrain_net("resnet10", {"alpha": 2, "beta": 3}).state_dict()
    trained = {k.split(".")[2] for k in r0 if k.startswith("head.branches.") and not torch.equal(r0[k], init[k])}
    ckpt = load_checkpoint(Path(cfg.out) / "checkpoint.pt")
    assert trained == set(ckpt["metrics"]["steps_per_domain"])  # only branches whose domain came up moved
    for k in r0:
        if "running_" in k or k.endswith("num_batches_tracked"):
            continue  # BN statistics are per rank (DDP broadcasts rank 0's at each forward)
        torch.testing.assert_close(r0[k], r1[k], rtol=0, atol=0, msg=k)  # gradients averaged: replicas agree
    assert ckpt["step"] == 3 and ckpt["world_size"] == 2
    assert [r["step"] for r in read_metrics(cfg.out, "train")] == [1, 2, 3]  # rank 0 alone logs


def test_resume_on_another_world_size_goes_on_with_a_new_sample_stream(tmp_path, fast_config):
    """A checkpoint of a 2-process job (its world size rewritten here; tests/scale/test_elastic_resume.py kills a
    real one) resumed by 1 process: a logged note, then the run trains to its end and records both world sizes."""
    from model.training.checkpoint import save_checkpoint

    cfg = fast_config(tmp_path / "run", steps=3)
    pretrain(cfg, stop_after=1, progress=False)
    path = Path(cfg.out) / "checkpoint.pt"
    ckpt = load_checkpoint(path)
    assert ckpt["world_size"] == 1 and ckpt["world_history"] == [[0, 1]]
    save_checkpoint({**ckpt, "world_size": 2, "world_history": [[0, 2]]}, path)
    logs: list[str] = []
    result = pretrain(cfg, resume=True, progress=False, log=logs.append)
    assert result.step == 3
    assert any("written by a run of 2 process(es), this one has 1: continuing at step 1 with a new sample "
               "stream" in line for line in logs), logs
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 3 and ckpt["world_size"] == 1 and ckpt["world_history"] == [[0, 2], [1, 1]]
    assert sorted(train_losses(Path(cfg.out))) == [1, 2, 3]


def test_resume_after_a_crash_logs_each_step_once(tmp_path, fast_config, monkeypatch):
    """A run killed between checkpoints repeats the steps after its last checkpoint on resume: metrics.jsonl
    must hold them once, with the losses of the resumed (and uninterrupted) run."""
    kw = dict(steps=5, ckpt_every=2, scheduler="constant", batch=1)
    full = train_losses(pretrain(fast_config(tmp_path / "full", **kw), progress=False).run_dir)

    cfg = fast_config(tmp_path / "crash", **kw)
    calls = {"n": 0}
    real_call = PretrainStepper.__call__

    def dies_at_step_4(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("killed")
        return real_call(self, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(PretrainStepper, "__call__", dies_at_step_4)
        with pytest.raises(KeyboardInterrupt):
            pretrain(cfg, progress=False)
    assert load_checkpoint(Path(cfg.out) / "checkpoint.pt")["step"] == 2
    assert [r["step"] for r in read_metrics(cfg.out, "train")] == [1, 2, 3]  # step 3 logged, not checkpointed
    pretrain(cfg, resume=True, progress=False)
    got = train_losses(Path(cfg.out))  # fails on a step logged twice
    assert sorted(got) == list(range(1, 6))
    for step in got:
        assert abs(got[step] - full[step]) <= 1e-6, (step, got[step], full[step])


@pytest.mark.slow
def test_ddp_validation_uses_rank0_batchnorm_statistics(tmp_path, fast_config):
    """Each rank updates its own BN running statistics after DDP's broadcast at a training forward; validation
    (every rank takes a share of the cases) must evaluate the model rank 0 checkpoints, not per-rank variants."""
    import torch.multiprocessing as mp

    cfg = fast_config(tmp_path / "run", steps=2, patch=(16, 16, 16), batch=1, val_every=2, val_max_cases=2)
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg.to_dict(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    ckpt = load_checkpoint(Path(cfg.out) / "checkpoint.pt")
    stats = [k for k in r0 if "running_" in k]
    assert stats
    for k in stats:  # validated at the last step: the evaluated statistics are rank 0's, which it saved
        torch.testing.assert_close(r1[k], r0[k], rtol=0, atol=0, msg=k)
        torch.testing.assert_close(ckpt["model"][k], r0[k], rtol=0, atol=0, msg=k)
    assert [r["step"] for r in read_metrics(cfg.out, "val")] == [2]
