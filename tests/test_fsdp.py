"""Sharded PPO (``ppo.sharding=fsdp``, rlhf/sharding.py): FSDP2 on two gloo ranks on the CPU."""

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as td
import torch.multiprocessing as mp

from rlhf.dist import Dist
from rlhf.rundir import read_json, read_jsonl

from conftest import REPO, tiny_overrides
from test_dist import B, _global_batch

QUICK = str(REPO / "experiments" / "quickstart.yaml")
pytestmark = pytest.mark.skipif(not td.is_available(), reason="torch.distributed is not available in this build")


def _update(rank: int, world: int, init_file: str, out: dict) -> dict:
    """Two real AdamW steps of each critic kind on this rank's share of the global batch
    (``test_dist._global_batch``), sharded with FSDP2 when ``world`` > 1; returns the full
    weights after them (rank 0), the second step's logged statistics and, sharded, a
    sampling check (before the steps) and an optimiser-state round trip."""
    from rlhf import sharding
    from rlhf.config import PPOConfig
    from rlhf.ppo import Batch, compute_advantages, make_optimizer, ppo_update
    torch.set_num_threads(1)
    d = Dist()
    if world > 1:
        td.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
        d = Dist(rank=rank, world=world, local_rank=rank, active=True)
    cpu = torch.device("cpu")
    res = {}
    for kind in ("separate", "head"):
        policy, critic, head, x = _global_batch()
        rows = torch.arange(B)[rank::world]
        pc = PPOConfig(critic=kind, whiten_rewards=True, ptx_coef=0.5 if kind == "head" else 0.0, grad_clip=0.5,
                       beta=0.1)
        if world > 1:
            sharding.shard_model(policy, cpu)
            sharding.shard_classifier(critic, cpu)
            sharding.shard_model(head, cpu)
            assert sharding.is_sharded(policy) and sharding.is_sharded(critic) and sharding.is_sharded(head)
        if world > 1 and kind == "separate":  # sampling with the gathered weights, before any step: each
            # rank decodes its own rows for a different number of steps (no collective in the loop)
            with sharding.gathered(policy):
                policy.eval()
                res["sampled"] = _sample(policy, x, rank)
                policy.train()
            res["resharded"] = sharding.is_sharded(policy)
        m = x["mask"][rows]
        adv, ret, _ = compute_advantages(x["score"][rows], x["logp"][rows], x["ref_logp"][rows], x["values"][rows],
                                         m, pc.beta, pc, d)
        mb = Batch(x["prompt_ids"][rows], x["prompt_mask"][rows], x["response_ids"][rows], m, x["logp"][rows],
                   x["ref_logp"][rows], x["values"][rows] * m, adv, ret)
        head_ = head if kind == "head" else None
        critic_ = critic if kind == "separate" else None
        opt = make_optimizer(list(policy.parameters()) + (list(head.parameters()) if head_ is not None else []), 1e-2)
        copt = make_optimizer(critic.parameters(), 1e-2) if critic_ is not None else None
        ptx = x["ptx"][torch.arange(4)[rank::world]] if pc.ptx_coef else None
        for _ in range(2):  # the second step reads AdamW's moments of the first
            stats = d.mean_dict(ppo_update(policy, mb, opt, pc, head_, critic_, copt, ptx, d))
        r = {"stats": stats}
        if world > 1:  # what this rank holds: its shard of the weights, gradients and AdamW moments
            r["held"] = (sum(p.to_local().numel() for p in policy.parameters()),
                         sum(p.grad.to_local().numel() for p in policy.parameters() if p.grad is not None),
                         sum(v.to_local().numel() for p in policy.parameters() for v in opt.state[p].values()
                             if sharding.is_dtensor(v)))
            r["policy"] = sharding.full_state_dict(policy, d)
            r["critic"] = sharding.full_state_dict(critic, d) if critic_ is not None else None
            r["head"] = sharding.full_state_dict(head, d) if head_ is not None else None
            # the optimiser's shards survive a save and a load into a fresh optimiser
            saved = sharding.local_optimizer_state(opt)
            opt2 = make_optimizer([p for g in opt.param_groups for p in g["params"]], 1e-2)
            sharding.load_local_optimizer_state(opt2, saved)
            a, b = opt.state_dict()["state"], opt2.state_dict()["state"]
            r["optim_round_trip"] = all(torch.equal(sharding.local_optimizer_state(opt)["state"][i][k],
                                                    sharding.local_optimizer_state(opt2)["state"][i][k])
                                        for i in a for k in a[i]) and a.keys() == b.keys()
        else:
            r["policy"] = {k: v.detach().clone() for k, v in policy.state_dict().items()}
            r["critic"] = {k: v.detach().clone() for k, v in critic.state_dict().items()} if critic_ else None
            r["head"] = {k: v.detach().clone() for k, v in head.state_dict().items()} if head_ is not None else None
        res[kind] = r
    if world > 1:
        td.destroy_process_group()
    out[rank] = res
    return res


def _sample(policy, x, rank: int):
    from rlhf.sampling import _decode
    rows = torch.arange(B)[rank::2]
    return _decode(policy, x["prompt_ids"][rows], x["prompt_mask"][rows], 1, 6 + 4 * rank, torch.tensor([1]), 0,
                   lambda z: z, False, torch.Generator().manual_seed(rank), False, temperature=1.0)


def test_two_fsdp_ranks_take_the_one_process_adamw_steps_and_sample_with_gathered_weights(tmp_path):
    """The same global batch on two gloo ranks with the policy, critic and value head sharded
    by FSDP2 (one unit per block) and in one process with full models: after two real AdamW
    steps (gradient clipping on, ptx on with the value head) the gathered weights and the
    logged statistics are the one process's to float tolerance; sampling inside
    ``sharding.gathered`` (ranks decoding different numbers of steps, no collective in
    the loop) draws the unsharded model's tokens; an optimiser's shards load back exactly."""
    one = _update(0, 1, "", {})
    with mp.Manager() as mgr:
        out = mgr.dict()
        mp.spawn(_update, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
        two = dict(out)
    for kind in ("separate", "head"):
        a, r0, r1 = one[kind], two[0][kind], two[1][kind]
        assert r0["stats"] == r1["stats"] and set(r0["stats"]) == set(a["stats"])
        for k, v in a["stats"].items():
            assert r0["stats"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), (kind, k)
        for part in ("policy", "critic", "head"):
            if a[part] is None:
                continue
            assert r1[part] == {}  # only rank 0 receives the full state dict
            assert r0[part].keys() == a[part].keys(), part
            for k, w in a[part].items():
                assert torch.allclose(r0[part][k], w, rtol=1e-4, atol=1e-6), (kind, part, k,
                                                                               (r0[part][k] - w).abs().max())
        # the step moved the weights (so the comparison above is not of two untouched copies)
        fresh = _global_batch()[0].state_dict()
        assert max((a["policy"][k] - fresh[k]).abs().max() for k in fresh) > 1e-3
        assert r0["optim_round_trip"] and r1["optim_round_trip"]
        n = sum(w.numel() for w in _global_batch()[0].parameters())  # the full policy (tied weights once)
        assert r0["held"][0] + r1["held"][0] == n and max(r0["held"][0], r1["held"][0]) <= n // 2 + 64
        assert r0["held"][1] == r0["held"][0] and r1["held"][1] == r1["held"][0]  # sharded gradients
        assert [h[2] for h in (r0["held"], r1["held"])] == [2 * h[0] for h in (r0["held"], r1["held"])]  # 2 moments
    for rank in (0, 1):
        assert two[rank]["resharded"]
        toks, lps = two[rank]["sampled"]
        policy, _, _, x = _global_batch()
        want_toks, want_lps = _sample(policy.eval(), x, rank)
        assert toks.shape == (4, 6 + 4 * rank) and torch.equal(toks, want_toks)
        assert torch.allclose(lps, want_lps, atol=1e-6)


def _torchrun(run_parent, extra, force=False):
    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "rlhf.cli", "run", QUICK] + tiny_overrides(run_parent, extra=["stages=[ppo]", "threads=1", *extra])
    return subprocess.run(args + (["--force"] if force else []), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


def _strip_time(rows):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


def test_torchrun_fsdp_matches_replicated_ranks_and_resumes_bit_for_bit(tiny_run, tmp_path):
    """Two gloo ranks under torchrun with ``ppo.sharding=fsdp``: (1) six PPO iterations log the
    metrics of the replicated two-rank run (full models, averaged gradients) to float
    tolerance and save the same policy as a plain Hugging Face folder; (2) a sharded run of
    four iterations continued to six from its sharded checkpoint (step 2: models gathered
    to rank 0, optimiser states one shard per rank) ends bit-identical to the
    uninterrupted sharded run."""
    import shutil

    from safetensors.torch import load_file
    path, _ = tiny_run
    runs = {}
    for name in ("fsdp", "repl", "cont"):
        (tmp_path / name).mkdir()
        runs[name] = tmp_path / name / "tiny"
        shutil.copytree(path, runs[name])
    for name, extra in (("fsdp", ["ppo.sharding=fsdp"]), ("repl", []), ("cont", ["ppo.sharding=fsdp", "ppo.steps=4"])):
        r = _torchrun(tmp_path / name, extra, force=True)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    sh, rep = runs["fsdp"] / "ppo", runs["repl"] / "ppo"
    a, b = _strip_time(read_jsonl(sh / "metrics.jsonl")), _strip_time(read_jsonl(rep / "metrics.jsonl"))
    assert len(a) == len(b) == 6
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], rel=1e-4, abs=1e-5), (ra["step"], k)
    wa, wb = load_file(sh / "model.safetensors"), load_file(rep / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], rtol=1e-3, atol=1e-5) for k in wa)
    assert read_json(sh / "config.json")["architectures"] == ["GPT2LMHeadModel"]
    assert (sh / "critic" / "model.safetensors").exists()
    kept = sh / "checkpoints" / "step_000004"
    assert (kept / "optim_rank0.pt").exists() and (kept / "optim_rank1.pt").exists()
    assert read_json(kept / "state.json")["sharding"] == "fsdp"
    assert torch.load(kept / "trainer_state.pt", weights_only=True)["opt"] is None

    r = _torchrun(tmp_path / "cont", ["ppo.sharding=fsdp", "ppo.steps=6"])  # raised: continues from step_000002
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "continuing the finished stage from step_000002" in r.stdout + r.stderr
    c = runs["cont"] / "ppo"
    assert _strip_time(read_jsonl(c / "metrics.jsonl")) == a
    wc = load_file(c / "model.safetensors")
    assert wc.keys() == wa.keys() and all(torch.equal(wa[k], wc[k]) for k in wa)
    ca, cc = load_file(sh / "critic" / "model.safetensors"), load_file(c / "critic" / "model.safetensors")
    assert all(torch.equal(ca[k], cc[k]) for k in ca)


def test_torchrun_fsdp_with_a_value_head_and_ptx_resumes_bit_for_bit(tiny_run, tmp_path):
    """The value-head critic (its own FSDP unit, in the policy's optimiser) with the ptx term,
    sharded on two gloo ranks: four iterations continued to six from the step-2 checkpoint
    end bit-identical to six uninterrupted ones, value head included."""
    import shutil

    from safetensors.torch import load_file
    path, _ = tiny_run
    extra = ["ppo.sharding=fsdp", "ppo.critic=head", "ppo.ptx_coef=0.5"]
    runs = {}
    for name in ("once", "cont"):
        (tmp_path / name).mkdir()
        runs[name] = tmp_path / name / "tiny" / "ppo"
        shutil.copytree(path, tmp_path / name / "tiny")
    for name, more, force in (("once", [], True), ("cont", ["ppo.steps=4"], True), ("cont", [], False)):
        r = _torchrun(tmp_path / name, extra + more, force=force)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    a, c = runs["once"], runs["cont"]
    rows = _strip_time(read_jsonl(a / "metrics.jsonl"))
    assert len(rows) == 6 and all(r["ptx_loss"] > 0 for r in rows)
    assert _strip_time(read_jsonl(c / "metrics.jsonl")) == rows
    for f in ("model.safetensors", "value_head.safetensors"):
        wa, wc = load_file(a / f), load_file(c / f)
        assert wa.keys() == wc.keys() and all(torch.equal(wa[k], wc[k]) for k in wa), f
    assert load_file(a / "value_head.safetensors")["weight"].abs().max() > 0  # trained from zero


def test_a_checkpoint_resumes_only_under_the_sharding_it_was_written_with(tmp_path):
    from rlhf.config import ConfigError, load_config
    from rlhf.ppo import load_checkpoint
    from rlhf.rundir import atomic_write_json
    cfg = load_config(QUICK, tiny_overrides(tmp_path))
    atomic_write_json(tmp_path / "state.json", {"step": 2, "controller": {}, "world_size": 1, "sharding": "fsdp"})
    with pytest.raises(ConfigError, match="written with ppo.sharding=fsdp, this run has ppo.sharding=replicate"):
        load_checkpoint(tmp_path, cfg, Dist(), torch.device("cpu"))
