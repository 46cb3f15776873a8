"""Elastic resume: one rank of a 2-process gloo DDP pretraining run is killed; the job restarted with 1 process
and --resume continues from the last checkpoint with a logged new sample stream and trains to the end."""
from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch

from scale_helpers import SHARED_FIXTURES, tiny_pretrain, train_losses
from s3_loopback import free_port

pytestmark = [pytest.mark.slow, SHARED_FIXTURES]

STEPS, CKPT_EVERY, KILLED_AT = 6, 2, 4  # rank 1 dies inside step 4: the last checkpoint is step 2's


def _rank(rank: int, port: int, store: str, out: str) -> None:
    """One rank of the 2-process job; rank 1 kills itself (SIGKILL, as the OOM killer or a lost node would) when
    it starts step KILLED_AT."""
    os.environ.update({"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from model.training.loop import PretrainStepper

    real_step = PretrainStepper.__call__
    calls = {"n": 0}

    def step(self, *args, **kwargs):
        calls["n"] += 1
        if rank == 1 and calls["n"] == KILLED_AT:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_step(self, *args, **kwargs)

    PretrainStepper.__call__ = step
    tiny_pretrain(store, Path(out), steps=STEPS, ckpt_every=CKPT_EVERY)


def test_killed_rank_then_one_process_resume_trains_to_the_end(local_build, tmp_path):
    import torch.multiprocessing as mp

    from model.training.checkpoint import load_checkpoint

    out = tmp_path / "run"
    ctx = mp.start_processes(_rank, args=(free_port(), local_build, str(out)), nprocs=2, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + 120
    hung = []
    for rank, proc in enumerate(ctx.processes):
        proc.join(timeout=max(1.0, deadline - time.monotonic()))
        if proc.is_alive():  # waiting on its dead peer past the deadline: ended here, and the test fails
            hung.append(rank)
            proc.kill()
            proc.join()
    codes = [proc.exitcode for proc in ctx.processes]
    assert not hung and codes[1] == -signal.SIGKILL and codes[0] not in (0, None), (hung, codes)
    # (rank 0 fails on the lost peer at its next collective instead of hanging)
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["step"] == CKPT_EVERY and ckpt["world_size"] == 2 and ckpt["world_history"] == [[0, 2]]

    shutil.copytree(out, tmp_path / "again")
    logs: list[str] = []
    result = tiny_pretrain(local_build, out, steps=STEPS, ckpt_every=CKPT_EVERY, resume=True, log=logs.append)
    assert result.step == STEPS
    assert any(f"written by a run of 2 process(es), this one has 1: continuing at step {CKPT_EVERY} with a new "
               "sample stream" in line for line in logs), logs
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["step"] == STEPS and ckpt["world_size"] == 1 and ckpt["world_history"] == [[0, 2], [CKPT_EVERY, 1]]
    losses = train_losses(out)
    assert sorted(losses) == list(range(1, STEPS + 1))  # steps 1-2 of the 2-process run, 3-6 of the resumed one
    # The new stream is a function of the checkpoint and the new world size: resuming again gives the same run.
    again = tiny_pretrain(local_build, tmp_path / "again", steps=STEPS, ckpt_every=CKPT_EVERY, resume=True)
    assert train_losses(again.run_dir) == losses
    for key, value in again.net.state_dict().items():
        assert torch.equal(value, result.net.state_dict()[key]), key
