"""Data-parallel PPO (rlhf/dist.py): real gloo process groups on CPU, real torchrun."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as td
import torch.multiprocessing as mp

from rlhf.config import ConfigError, load_config
from rlhf.dist import Dist
from rlhf.rundir import read_json, read_jsonl

from conftest import REPO, tiny_overrides

QUICK = str(REPO / "experiments" / "quickstart.yaml")


def _collectives(rank: int, world: int, init_file: str, out: dict) -> None:
    td.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    d = Dist(rank=rank, world=world, local_rank=rank, active=True)
    w = torch.nn.Parameter(torch.zeros(3))
    b = torch.nn.Parameter(torch.zeros(2, 2))
    w.grad = torch.tensor([1.0, 2.0, 3.0]) * (rank + 1)  # rank 0: 1x, rank 1: 2x
    b.grad = torch.full((2, 2), float(rank))
    d.average_gradients([w, b])
    row = d.mean_dict({"kl": 1.0 + rank, "reward": -2.0 * rank})
    flags = (d.any(rank == 1), d.any(False))
    d.check_same_weights([w, b], "same")
    diverged = ""
    with torch.no_grad():
        b.add_(rank)
    try:
        d.check_same_weights([w, b], "after a rank-local change")
    except RuntimeError as e:
        diverged = str(e)
    from rlhf.pipeline import Diverged
    from rlhf.ppo import check_finite
    try:  # NaN on rank 1 only: both ranks stop
        check_finite(5, {"reward": torch.tensor([1.0, float("nan") if rank == 1 else 2.0])}, d)
        nan_stop = "not raised"
    except Diverged as e:
        nan_stop = str(e)
    out[rank] = (w.grad.tolist(), b.grad.tolist(), row, flags, diverged, nan_stop)
    td.destroy_process_group()


def test_gradient_average_metric_mean_stop_and_nan_agreement_and_weight_check_on_two_gloo_ranks(tmp_path):
    with mp.Manager() as m:
        out = m.dict()
        mp.spawn(_collectives, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
        out = dict(out)
    for rank in (0, 1):
        wg, bg, row, flags, diverged, nan_stop = out[rank]
        assert wg == [1.5, 3.0, 4.5]  # mean of 1x and 2x
        assert bg == [[0.5, 0.5], [0.5, 0.5]]
        assert row == {"kl": 1.5, "reward": -1.0}
        assert flags == (True, False)  # a stop on one rank is a stop on all
        assert "ranks' weights differ" in diverged
    assert "non-finite values at PPO step 5" in out[1][5] and "'reward': [nan]" in out[1][5]
    assert out[0][5] == "non-finite values on another rank at PPO step 5"


def test_global_batch_must_divide_by_the_number_of_ranks(tiny_run, tmp_path):
    from rlhf.ppo import run_ppo
    from rlhf.rundir import RunDir
    cfg = load_config(QUICK, tiny_overrides(tmp_path, extra=["ppo.batch_size=8", "ppo.minibatch_size=4"]))
    with pytest.raises(ConfigError, match="divide by the number of data-parallel processes \\(3\\)"):
        run_ppo(cfg, RunDir(tmp_path / "x"), "unused", "unused", None, None, torch.device("cpu"),
                Dist(rank=0, world=3))
    assert not (tmp_path / "x").exists()


def test_iterated_rlhf_refuses_a_launcher(monkeypatch, tmp_path):
    from rlhf.pipeline import run_pipeline
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = load_config(QUICK, tiny_overrides(tmp_path, extra=["ppo.rounds=2"]))
    with pytest.raises(ConfigError, match="ppo.rounds > 1"):
        run_pipeline(cfg)
    assert not (tmp_path / "tiny").exists()


def _torchrun(run_parent, extra, force=False):
    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "rlhf.cli", "run", QUICK] + tiny_overrides(run_parent, extra=["stages=[ppo]", "threads=1", *extra])
    return subprocess.Popen(args + (["--force"] if force else []), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _strip_time(rows):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


def test_torchrun_two_ranks_sigterm_then_resume_equals_an_uninterrupted_run(tiny_run, tmp_path):
    """Two gloo ranks under torchrun: SIGTERM to the launcher makes both ranks checkpoint the
    same iteration (no periodic checkpoint exists: checkpoint_every > steps); the resumed run
    ends bit-identical to an uninterrupted two-rank run."""
    extra = ["ppo.steps=30", "ppo.checkpoint_every=1000", "ppo.batch_size=8", "ppo.minibatch_size=4"]
    path, _ = tiny_run
    runs = {}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        runs[name] = tmp_path / name / "tiny"
        shutil.copytree(path, runs[name])
    p = _torchrun(tmp_path / "a", extra, force=True)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out[-3000:]
    a = runs["a"]
    st = read_json(a / "status.json")
    assert st["state"] == "done" and st["world_size"] == 2
    assert out.count("[ppo] 30 iterations") == 1  # only rank 0 reports and writes

    b = runs["b"]
    p = _torchrun(tmp_path / "b", extra, force=True)
    metrics = b / "ppo.tmp" / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 5):
        assert p.poll() is None, p.communicate()[0][-3000:]
        time.sleep(0.05)
    seen = len(metrics.read_text().splitlines())
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    assert p.returncode != 0
    st = read_json(b / "status.json")
    stopped = len(read_jsonl(metrics))
    assert st["state"] == "interrupted" and st["step"] == stopped and seen <= stopped < 30, st
    ck = b / "ppo.tmp" / "checkpoints" / f"step_{stopped:06d}"
    assert (ck / "rng_rank1.pt").exists() and read_json(ck / "state.json")["world_size"] == 2
    p = _torchrun(tmp_path / "b", extra)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out[-3000:]
    assert f"resumed from step_{stopped:06d}" in out
    assert _strip_time(read_jsonl(a / "ppo" / "metrics.jsonl")) == _strip_time(read_jsonl(b / "ppo" / "metrics.jsonl"))
    from safetensors.torch import load_file
    wa, wb = load_file(a / "ppo" / "model.safetensors"), load_file(b / "ppo" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_torchrun_whole_pipeline_rank0_runs_the_stages_before_ppo(tmp_path):
    """Under torchrun, pretrain/SFT (the Hugging Face Trainer)/RM run on rank 0 alone, with the
    launcher's variables hidden, while rank 1 waits; then both ranks run PPO."""
    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "rlhf.cli", "run", QUICK] + tiny_overrides(tmp_path, extra=["threads=1"])
    r = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    run = tmp_path / "tiny"
    st = read_json(run / "status.json")
    assert st["state"] == "done" and st["world_size"] == 2
    assert all((run / s / "DONE").exists() for s in ("world", "pretrain", "sft", "rm", "ppo"))
    assert (r.stdout + r.stderr).count("[sft] 24 demonstrations") == 1  # one process trained SFT
    assert len(read_jsonl(run / "ppo" / "metrics.jsonl")) == 6
