"""Data-parallel PPO (rlhf/dist.py): real gloo process groups on CPU, real torchrun."""

import copy
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
from rlhf.dist import Dist, DistTimeout
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
    from rlhf.errors import Diverged
    from rlhf.ppo import check_finite
    try:  # NaN on rank 1 only: both ranks stop
        check_finite(5, {"reward": torch.tensor([1.0, float("nan") if rank == 1 else 2.0])}, d)
        nan_stop = "not raised"
    except Diverged as e:
        nan_stop = str(e)
    d.barrier("a barrier both ranks reach", timeout=60)
    lonely = ""
    if rank == 0:  # rank 1 never comes: rank 0 stops after the timeout, naming what it waited for
        try:
            d.barrier("the test's lonely barrier", timeout=0.5)
        except DistTimeout as e:
            lonely = str(e)
    out[rank] = (w.grad.tolist(), b.grad.tolist(), row, flags, diverged, nan_stop, lonely)
    td.destroy_process_group()


def test_gradient_average_metric_mean_stop_and_nan_agreement_and_weight_check_on_two_gloo_ranks(tmp_path):
    with mp.Manager() as m:
        out = m.dict()
        mp.spawn(_collectives, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
        out = dict(out)
    for rank in (0, 1):
        wg, bg, row, flags, diverged, nan_stop, _ = out[rank]
        assert wg == [1.5, 3.0, 4.5]  # mean of 1x and 2x
        assert bg == [[0.5, 0.5], [0.5, 0.5]]
        assert row == {"kl": 1.5, "reward": -1.0}
        assert flags == (True, False)  # a stop on one rank is a stop on all
        assert "ranks' weights differ" in diverged
    assert "non-finite values at PPO step 5" in out[1][5] and "'reward': [nan]" in out[1][5]
    assert out[0][5] == "non-finite values on another rank at PPO step 5"
    assert "waited 0.5 s at the test's lonely barrier" in out[0][6] and "1 of 2 arrived" in out[0][6]


def test_wait_ready_times_out_naming_the_file_and_the_launch(tmp_path, monkeypatch):
    from rlhf.dist import announce_ready, wait_ready
    monkeypatch.setenv("RLHF_LAUNCH_ID", "job-7")
    ready = tmp_path / "dist_ready.json"
    with pytest.raises(DistTimeout, match="dist_ready.json should name this launch 'rlhf:job-7/0', it does not exist"):
        wait_ready(ready, poll_s=0.01, timeout=0.2)
    monkeypatch.setenv("RLHF_LAUNCH_ID", "job-6")
    announce_ready(ready)  # an earlier launch's file
    monkeypatch.setenv("RLHF_LAUNCH_ID", "job-7")
    with pytest.raises(DistTimeout, match="it names launch 'rlhf:job-6/0'"):
        wait_ready(ready, poll_s=0.01, timeout=0.2)
    announce_ready(ready)
    wait_ready(ready, poll_s=0.01, timeout=0.2)  # this launch's: returns at once
    monkeypatch.setenv("RLHF_READY_TIMEOUT_S", "soon")
    with pytest.raises(DistTimeout, match="RLHF_READY_TIMEOUT_S='soon' is not a number"):
        wait_ready(tmp_path / "other.json", poll_s=0.01)


def test_launch_ids_are_the_same_on_every_node_of_one_launch(monkeypatch):
    from rlhf import dist
    for k in ("RLHF_LAUNCH_ID", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "SLURM_JOB_ID", "SLURM_STEP_ID",
              "SLURM_RESTART_COUNT", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)

    def on_node(launcher_pid):  # each node has its own torchrun agent, with its own pid
        monkeypatch.setattr(dist.os, "getppid", lambda: launcher_pid)
        return dist.launch_id()

    monkeypatch.setenv("MASTER_PORT", "29500")
    assert on_node(11) != on_node(12)  # no launcher id: one node only (the launcher's pid)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    assert on_node(11) == on_node(12) == "slurm:4242.0.0/0"
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # a requeued job is a new launch
    assert on_node(11) == "slurm:4242.0.1/0"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun's default rendezvous id says nothing
    assert on_node(11) == "slurm:4242.0.1/0"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "a1b2")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    assert on_node(11) == on_node(12) == "torchrun:a1b2/2"
    monkeypatch.setenv("RLHF_LAUNCH_ID", "mine")
    assert on_node(11) == "rlhf:mine/2"


# ----------------------------------------------------------------------------- the one-process estimator

B, P, T, VOCAB = 8, 5, 7, 50  # global batch: 8 episodes, prompts of 5 tokens, responses of up to 7


def _global_batch():
    """A fixed global batch with unequal response lengths (and so unequal token counts per
    rank), a scratch GPT-2 policy, a critic (its sequence-classifier twin) and a value head."""
    from rlhf.config import ModelConfig
    from rlhf.models import scratch_model
    from transformers import GPT2ForSequenceClassification
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    policy = scratch_model(ModelConfig(n_layer=1, n_embd=32, n_head=2, n_positions=32), VOCAB, 0, 1)
    critic_cfg = copy.deepcopy(policy.config)
    critic_cfg.num_labels = 1
    critic = GPT2ForSequenceClassification(critic_cfg)
    head = torch.nn.Linear(32, 1)
    pads = torch.tensor([0, 2, 0, 1, 3, 0, 0, 2])  # left padding of each prompt
    prompt_mask = (torch.arange(P)[None] >= pads[:, None]).long()
    lengths = torch.tensor([7, 1, 3, 7, 2, 5, 6, 1])  # rows 0::2 hold 23 tokens, rows 1::2 hold 14
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    data = {"prompt_ids": torch.randint(2, VOCAB, (B, P), generator=g) * prompt_mask,
            "prompt_mask": prompt_mask, "response_ids": torch.randint(2, VOCAB, (B, T), generator=g),
            "mask": mask, "score": torch.randn(B, generator=g), "ref_logp": -torch.rand(B, T, generator=g) * 4,
            "values": torch.randn(B, T, generator=g), "ptx": torch.randint(2, VOCAB, (4, 9), generator=g)}
    from rlhf.ppo import policy_forward
    with torch.no_grad():  # log π_old: the policy's own, moved a little so that the ratios differ from 1
        logp, _, _ = policy_forward(policy, data["prompt_ids"], prompt_mask, data["response_ids"], mask)
    data["logp"] = logp + 0.3 * torch.randn(B, T, generator=g) * mask
    return policy, critic, head, data


def _estimator(rank: int, world: int, init_file: str, out: dict) -> dict:
    """Advantages and one update of each critic kind on this rank's share of the global batch
    (rows rank::world; world 1: all of it); returns what every rank must agree on."""
    from rlhf.config import PPOConfig
    from rlhf.ppo import Batch, compute_advantages, ppo_update
    torch.set_num_threads(1)
    d = Dist()
    if world > 1:
        td.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
        d = Dist(rank=rank, world=world, local_rank=rank, active=True)
    res = {}
    for critic_kind in ("separate", "head"):
        policy, critic, head, x = _global_batch()
        rows = torch.arange(B)[rank::world]
        pc = PPOConfig(critic=critic_kind, whiten_rewards=True, ptx_coef=0.5 if critic_kind == "head" else 0.0,
                       grad_clip=0.5, beta=0.1)
        m = x["mask"][rows]
        adv, ret, kl = compute_advantages(x["score"][rows], x["logp"][rows], x["ref_logp"][rows], x["values"][rows],
                                          m, pc.beta, pc, d)
        mb = Batch(x["prompt_ids"][rows], x["prompt_mask"][rows], x["response_ids"][rows], m, x["logp"][rows],
                   x["ref_logp"][rows], x["values"][rows] * m, adv, ret)
        head_ = head if critic_kind == "head" else None
        params = list(policy.parameters()) + (list(head.parameters()) if head_ is not None else [])
        opt = torch.optim.SGD(params, lr=0.0)  # lr 0: the gradients stay, the weights do not move
        critic_ = critic if critic_kind == "separate" else None
        copt = torch.optim.SGD(critic.parameters(), lr=0.0) if critic_ is not None else None
        ptx = x["ptx"][torch.arange(4)[rank::world]] if pc.ptx_coef else None
        stats = ppo_update(policy, mb, opt, pc, head_, critic_, copt, ptx, d)
        stats = d.mean_dict(stats)  # what run_ppo logs: the mean over ranks
        grads = torch.cat([p.grad.reshape(-1) for p in params])
        cgrads = torch.cat([p.grad.reshape(-1) for p in critic.parameters()]) if critic_ is not None else None
        res[critic_kind] = {"rows": rows, "adv": adv, "ret": ret, "stats": stats, "grads": grads, "cgrads": cgrads}
    if world > 1:
        td.destroy_process_group()
    out[rank] = res
    return res


def test_two_gloo_ranks_compute_the_one_process_loss_advantages_and_gradients(tmp_path):
    """The same global batch on two gloo ranks (rows 0::2 and 1::2, with 23 and 14 response
    tokens) and in one process: the same whitened advantages and returns, the same logged
    loss statistics, and the same averaged, clipped gradients of the policy (with a value
    head and ptx) and of a separate critic, to float tolerance."""
    one = _estimator(0, 1, "", {})
    with mp.Manager() as mgr:
        out = mgr.dict()
        mp.spawn(_estimator, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
        two = dict(out)
    for kind in ("separate", "head"):
        a, r0, r1 = one[kind], two[0][kind], two[1][kind]
        for k in ("adv", "ret"):  # whitened with the global batch's statistics
            glued = torch.empty_like(a[k])
            glued[r0["rows"]], glued[r1["rows"]] = r0[k], r1[k]
            assert torch.allclose(glued, a[k], rtol=1e-5, atol=1e-6), (kind, k, (glued - a[k]).abs().max())
        assert r0["stats"] == r1["stats"]
        assert set(r0["stats"]) == set(a["stats"])
        for k, v in a["stats"].items():
            assert r0["stats"][k] == pytest.approx(v, rel=1e-5, abs=1e-7), (kind, k)
        for g in ("grads", "cgrads"):
            if a[g] is None:
                continue
            assert torch.equal(r0[g], r1[g])  # both ranks step with the same gradient
            assert torch.allclose(r0[g], a[g], rtol=1e-4, atol=1e-7), (kind, g, (r0[g] - a[g]).abs().max())
            assert a[g].abs().max() > 1e-3  # a real gradient


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
