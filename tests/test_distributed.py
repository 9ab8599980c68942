"""Training under torchrun: 2 CPU processes (gloo) against one process on the same config."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from softmaxlab import distributed
from softmaxlab.cli import main
from softmaxlab.distributed import World, env_world
from softmaxlab.errors import UserError
from softmaxlab.progress import Progress
from softmaxlab.train import _fit, _Job, fit

from .conftest import TINY, tiny_config


def test_env_world_reads_torchrun_variables(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    world = env_world()
    assert (world.rank, world.size, world.distributed, world.is_main) == (2, 4, True, False)
    monkeypatch.delenv("WORLD_SIZE")
    assert not env_world().distributed


def test_global_batch_must_split_evenly_over_processes(tmp_path):
    cfg = tiny_config("train.batch_size=64")
    with pytest.raises(UserError, match="must divide evenly over 3 processes"):
        job = _Job(cfg, tmp_path / "run", overwrite=False, resume=False, progress=Progress(), data=None, hooks=())
        _fit(job, World(0, 3), torch.device("cpu"))
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_two_process_gloo_run_matches_a_single_process_run(tmp_path):
    overrides = [*TINY, "train.epochs=3"]
    single = fit(tiny_config("train.epochs=3"), tmp_path / "single")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "softmaxlab", "run", "--out", str(tmp_path / "ddp")]
    for o in overrides:
        cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("wrote ") == 1  # rank 0 speaks for both processes

    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert summary["env"]["processes"] == 2 and [r["epoch"] for r in records] == [1, 2, 3]
    # Same global batches, same augmentation, averaged gradients: only the BatchNorm
    # statistics (per rank, over half a batch) and the summation order differ.
    assert records[0]["train_loss"] == pytest.approx(single.history[0]["train_loss"], abs=0.05)
    assert summary["test"]["accuracy"] == pytest.approx(single.summary["test"]["accuracy"], abs=0.08)
    assert summary["test"]["nll"] == pytest.approx(single.summary["test"]["nll"], abs=0.1)
    # Metrics are reduced over the ranks: every training image counted once per epoch.
    images = records[-1]["train_images_per_second"] * records[-1]["epoch_seconds"]
    assert images == pytest.approx(1024, abs=1)


def test_a_process_that_joined_a_group_ends_without_interpreter_finalization(monkeypatch, capsys):
    ended: list[int] = []
    monkeypatch.setattr(os, "_exit", ended.append)
    with pytest.raises(SystemExit) as exc:
        main(["list", "heads"])  # no group joined: a normal exit, finalization included
    assert exc.value.code == 0 and ended == []

    monkeypatch.setattr(distributed, "_joined_group", True)
    with pytest.raises(SystemExit):  # os._exit is only recorded here, so sys.exit follows
        main(["list", "nothing"])
    assert ended == [2]  # the command's exit code, bad input included

    def crash(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("softmaxlab.models.backbone_parameters", crash)
    with pytest.raises(SystemExit):
        main(["list", "models"])
    assert ended == [2, 1]  # a bug too: its traceback, then the same exit
    assert "RuntimeError: a bug" in capsys.readouterr().err


_RANK_SCRIPT = """
import json, sys
from softmaxlab.config import load_config
from softmaxlab.distributed import end_process, env_world
from softmaxlab.train import fit
result = fit(load_config(None, json.loads(sys.argv[2])), sys.argv[1])
record = result.history[-1]
# One write of the whole line: two ranks share the pipe, and print's separate writes interleave.
sys.stdout.write(f"rank {env_world().rank} {json.dumps([record['val_acc'], record['val_coarse_acc']])}\\n")
sys.stdout.flush()
end_process(0)  # as the CLI ends: gloo's worker threads may outlive the group (see end_process)
"""


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_a_metric_a_head_tallies_is_summed_over_the_processes(tmp_path):
    # The hierarchical head counts its coarse hits inside its loss, on each rank's shard of the
    # validation split; every rank must report the tally over the whole split, as val_acc is.
    overrides = [*TINY, "train.epochs=1", "data.train_size=256", "head.name=hierarchical"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["--no-python", sys.executable, "-c", _RANK_SCRIPT, str(tmp_path / "run")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*cmd, json.dumps(overrides)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ranks = dict(line.split(" ", 2)[1:] for line in proc.stdout.splitlines() if line.startswith("rank "))
    assert sorted(ranks) == ["0", "1"]
    assert ranks["0"] == ranks["1"]  # both ranks: the whole split (their shards differ)
    val_acc, coarse_acc = json.loads(ranks["0"])
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["val_coarse_acc"] == coarse_acc and records[-1]["val_acc"] == val_acc
