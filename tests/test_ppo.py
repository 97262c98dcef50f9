"""PPO-ptx on a tiny run: the update, resumption after SIGKILL and SIGTERM, divergence, bad input."""

import dataclasses
import os
import signal
import subprocess
import time

import pytest
import torch
from transformers import AutoTokenizer

from rlhf.losses import lm_loss
from rlhf.models import load_causal_lm, load_reward_model
from rlhf.errors import Diverged
from rlhf.pipeline import run_pipeline
from rlhf.ppo import Batch, CriticThread, policy_forward, ppo_update
from rlhf.rundir import read_json, read_jsonl, read_jsonl_gz
from rlhf.sampling import sample
from rlhf.world import World

from conftest import QUICKSTART as QUICK, REPO, copy_run, ppo_cfg, rlhf_cmd, tiny_overrides

PPO_KEYS = {"ppo_reward", "gold_reward", "kl", "beta", "clipfrac", "approx_kl", "entropy", "vf_loss", "ptx_loss",
            "pg_loss", "rm_score", "response_len"}


def test_ppo_runs_logs_and_saves(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    run_pipeline(ppo_cfg(tmp_path, ["ppo.ptx_coef=1.0"]), force=True)
    rows = read_jsonl(run / "ppo" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(6))
    assert PPO_KEYS <= set(rows[0])
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # the first rollout is the SFT policy's own
    assert all(r["ptx_loss"] > 0 for r in rows)
    summary = read_json(run / "ppo" / "summary.json")
    assert "heldout_lm_loss_final" in summary and "heldout_lm_loss_sft" in summary
    assert {"final_ppo_reward", "final_rm_score", "final_gold_reward", "final_kl"} <= set(summary)
    assert not [k for k in summary if "proxy" in k]
    samples = read_jsonl_gz(run / "ppo" / "samples.jsonl.gz")
    assert [r["step"] for r in samples] == [st for st in range(6) for _ in range(8)]
    assert {"prompt", "response", "rm_score", "ppo_reward", "gold_reward", "kl"} <= set(samples[0])
    for st in range(6):  # the logged means are the means of the kept samples
        sr = [r for r in samples if r["step"] == st]
        for k in ("rm_score", "ppo_reward", "gold_reward", "kl"):
            assert sum(r[k] for r in sr) / len(sr) == pytest.approx(rows[st][k], rel=1e-5, abs=1e-6)
    assert [p.name for p in (run / "ppo" / "checkpoints").iterdir()] == ["step_000004"]  # the newest stays
    load_causal_lm(str(run / "ppo"))
    assert read_json(run / "status.json")["state"] == "done"


def test_first_minibatch_is_on_policy(tiny_run):
    """The old log-probs come from the sampling pass (no extra forward): they match a forward
    pass to float rounding, and the first update of an iteration still sees ratio exactly 1
    (its own forward's log-probs are π_old), so its clip fraction and approximate KL are 0
    and its surrogate is exactly -mean(A)."""
    from rlhf.losses import masked_mean
    path, cfg = tiny_run
    tok = AutoTokenizer.from_pretrained(path / "sft")
    policy = load_causal_lm(str(path / "sft"))
    prompts = [p.text for p in World(cfg.world).train_prompts()[:6]]
    s = sample(policy, tok, prompts, max_new_tokens=6, seed=3, temperature=0.9, logprobs=True)
    m = s.response_mask.float()
    with torch.no_grad():
        policy.eval()
        a, _, _ = policy_forward(policy, s.prompt_ids, s.prompt_mask, s.response_ids, s.response_mask, 0.9)
        policy.train()  # dropout 0: training mode gives the same log-probs
        b, _, _ = policy_forward(policy, s.prompt_ids, s.prompt_mask, s.response_ids, s.response_mask, 0.9)
    assert torch.equal(a, b)
    assert torch.allclose(s.logprobs * m, a * m, atol=1e-5)
    adv = torch.randn(m.shape, generator=torch.Generator().manual_seed(0)) * m
    mb = Batch(s.prompt_ids, s.prompt_mask, s.response_ids, m, s.logprobs, s.logprobs, torch.zeros_like(m), adv,
               torch.zeros_like(m))
    opt = torch.optim.SGD(policy.parameters(), lr=0.0)
    pc = cfg.ppo.__class__(**{**cfg.ppo.__dict__, "temperature": 0.9})
    st = ppo_update(policy, mb, opt, pc, on_policy=True)
    assert st["approx_kl"] == 0.0 and st["clipfrac"] == 0.0
    assert st["pg_loss"] == -masked_mean(adv, m).item()
    off = ppo_update(policy, mb, opt, pc)  # the sampling pass's log-probs as π_old: not bit-identical
    assert abs(off["approx_kl"]) < 1e-8


@pytest.mark.parametrize("kw", [dict(seed=5, temperature=0.8, top_p=0.9, logprobs=True),
                                dict(seed=6, n=3, shared_prefix=True, logprobs=True), dict(greedy=True)])
def test_lean_gpt2_decode_step_draws_what_the_model_forward_draws(tiny_run, monkeypatch, kw):
    """The sampler's lean GPT-2 step (rlhf.gpt2.step) stands in for the model's own
    forward after the prefill: the same tokens and the same log-probs, bit for bit, on
    left-padded prompts of different lengths and on one unpadded prompt."""
    import rlhf.sampling as sampling
    path, cfg = tiny_run
    tok = AutoTokenizer.from_pretrained(path / "sft")
    policy = load_causal_lm(str(path / "sft"))
    prompts = [p.text for p in World(cfg.world).prompts()]
    prompts = sorted(prompts, key=len)[:3] + sorted(prompts, key=len)[-3:]
    assert sampling._lean_gpt2(policy.eval())
    calls = []
    step = sampling.gpt2.step
    monkeypatch.setattr(sampling.gpt2, "step", lambda *a: calls.append(1) or step(*a))
    for ps in (prompts, prompts[-1:]):
        lean = sample(policy, tok, ps, max_new_tokens=10, **kw)
        n_lean = len(calls)
        assert n_lean > 0
        monkeypatch.setattr(sampling, "_lean_gpt2", lambda m: False)
        ref = sample(policy, tok, ps, max_new_tokens=10, **kw)
        monkeypatch.undo()
        monkeypatch.setattr(sampling.gpt2, "step", lambda *a: calls.append(1) or step(*a))
        assert len(calls) == n_lean  # the reference did not take the lean step
        assert torch.equal(lean.response_ids, ref.response_ids) and lean.texts == ref.texts
        if kw.get("logprobs"):
            assert torch.equal(lean.logprobs, ref.logprobs)
        calls.clear()


def test_lean_gpt2_sampling_under_bf16_autocast_draws_what_the_model_forward_draws(tiny_run, monkeypatch):
    """Under model.autocast=bf16 (PPO's rollouts run under it) the lean path's padding bias
    is built in the attention's dtype: the same tokens and log-probs as the model's own
    forward, padded and unpadded prompts."""
    import rlhf.sampling as sampling
    from rlhf.models import autocast
    path, cfg = tiny_run
    tok = AutoTokenizer.from_pretrained(path / "sft")
    policy = load_causal_lm(str(path / "sft"))
    prompts = sorted((p.text for p in World(cfg.world).prompts()), key=len)
    for ps in (prompts[:2] + prompts[-2:], prompts[-1:]):
        with autocast(torch.device("cpu"), "bf16"):
            lean = sample(policy, tok, ps, max_new_tokens=8, seed=3, logprobs=True)
            with monkeypatch.context() as m:
                m.setattr(sampling, "_lean_gpt2", lambda model: False)
                ref = sample(policy, tok, ps, max_new_tokens=8, seed=3, logprobs=True)
        assert torch.equal(lean.response_ids, ref.response_ids) and torch.equal(lean.logprobs, ref.logprobs)


def test_ptx_changes_the_update_gradient_by_gamma_grad_lm(tiny_run):
    path, cfg = tiny_run
    tok = AutoTokenizer.from_pretrained(path / "sft")
    policy = load_causal_lm(str(path / "sft"))
    s = sample(policy, tok, [p.text for p in World(cfg.world).train_prompts()[:4]], max_new_tokens=6)
    with torch.no_grad():
        logp, _, _ = policy_forward(policy, s.prompt_ids, s.prompt_mask, s.response_ids, s.response_mask)
    m = s.response_mask.float()
    adv = torch.randn(logp.shape, generator=torch.Generator().manual_seed(0)) * m
    mb = Batch(s.prompt_ids, s.prompt_mask, s.response_ids, m, logp - 0.05, logp, torch.zeros_like(m), adv,
               torch.zeros_like(m))
    ptx_x = torch.randint(3, len(tok), (3, 12), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.SGD(policy.parameters(), lr=0.0)  # lr 0: grads stay, weights do not move

    def grads(gamma):
        pc = cfg.ppo.__class__(**{**cfg.ppo.__dict__, "ptx_coef": gamma, "grad_clip": 1e9})
        ppo_update(policy, mb, opt, pc, ptx_x=ptx_x if gamma else None)
        return [p.grad.clone() for p in policy.parameters()]

    gamma = 2.5
    g0, g1 = grads(0.0), grads(gamma)
    policy.zero_grad()
    lm_loss(policy(input_ids=ptx_x).logits, ptx_x).backward()
    for a, b, p in zip(g0, g1, policy.parameters()):
        assert torch.allclose(b - a, gamma * p.grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("extra", [
    ["ppo.critic=head"], ["ppo.clip_eps=none", "ppo.value_clip=none"], ["ppo.adaptive_kl=true", "ppo.target_kl=0.5"],
    ["ppo.beta=0", "ppo.whiten_rewards=true"], ["ppo.rounds=2"],
])
def test_ppo_variants(tiny_run, tmp_path, extra):
    run = copy_run(tiny_run, tmp_path)
    run_pipeline(ppo_cfg(tmp_path, extra), force=True)
    rows = read_jsonl(run / "ppo" / "metrics.jsonl")
    assert len(rows) == 6 and all(torch.isfinite(torch.tensor(r["ppo_reward"])) for r in rows)
    if "ppo.adaptive_kl=true" in extra:
        assert len({r["beta"] for r in rows}) > 1
    if "ppo.rounds=2" in extra:
        assert (run / "ppo" / "rm_round1" / "DONE").exists()
        assert {r["round"] for r in read_jsonl(run / "comparisons.jsonl")} == {0, 1}
        assert [r["round"] for r in rows] == [0, 0, 0, 1, 1, 1]


def _cli_ppo(run_parent, extra, force=False):
    env = dict(os.environ, TQDM_DISABLE="1")
    args = rlhf_cmd() + ["run", QUICK] + tiny_overrides(run_parent, extra=["stages=[ppo]", *extra])
    return subprocess.Popen(args + (["--force"] if force else []), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _strip_time(rows):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


def test_sigkill_or_sigterm_mid_ppo_then_resume_gives_same_result(tiny_run, tmp_path):
    extra = ["ppo.steps=40", "ppo.checkpoint_every=4", "ppo.ptx_coef=0.5"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = copy_run(tiny_run, tmp_path / "a"), copy_run(tiny_run, tmp_path / "b")
    p = _cli_ppo(tmp_path / "a", extra, force=True)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]

    p = _cli_ppo(tmp_path / "b", extra, force=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((b / "ppo.tmp" / "checkpoints").glob("step_000008")):
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere after a checkpoint, mid-iteration
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL
    assert not (b / "ppo" / "DONE").exists()
    killed_at = len(read_jsonl(b / "ppo.tmp" / "metrics.jsonl"))
    assert 8 <= killed_at < 40
    p = _cli_ppo(tmp_path / "b", extra)  # same config, no --force: resumes
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    assert "resumed from step_" in out
    ra, rb = read_jsonl(a / "ppo" / "metrics.jsonl"), read_jsonl(b / "ppo" / "metrics.jsonl")
    assert len(rb) == 40
    assert _strip_time(ra) == _strip_time(rb)
    fa, fb = read_json(a / "ppo" / "summary.json"), read_json(b / "ppo" / "summary.json")
    assert _strip_time([fa["final"]]) == _strip_time([fb["final"]])
    from safetensors.torch import load_file
    wa, wb = load_file(a / "ppo" / "model.safetensors"), load_file(b / "ppo" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    # SIGTERM: a checkpoint at the end of the iteration in flight, exit 143, and the resume
    # starts exactly there (not at the last periodic checkpoint, a multiple of 4)
    (tmp_path / "c").mkdir()
    c = copy_run(tiny_run, tmp_path / "c")
    p = _cli_ppo(tmp_path / "c", extra, force=True)
    metrics = c / "ppo.tmp" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 9):
        time.sleep(0.02)
    seen = len(metrics.read_text().splitlines())
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 143, err[-3000:]
    st = read_json(c / "status.json")
    stopped_at = len(read_jsonl(metrics))
    assert st["state"] == "interrupted" and st["stage"] == "ppo" and st["step"] == stopped_at, st
    assert seen <= stopped_at < 40
    assert (c / "ppo.tmp" / "checkpoints" / f"step_{stopped_at:06d}" / "state.json").exists()
    assert "SIGTERM" in err and "re-run the same config to resume" in err
    p = _cli_ppo(tmp_path / "c", extra)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    assert f"resumed from step_{stopped_at:06d}" in out
    assert _strip_time(read_jsonl(c / "ppo" / "metrics.jsonl")) == _strip_time(ra)
    wc = load_file(c / "ppo" / "model.safetensors")
    assert all(torch.equal(wa[k], wc[k]) for k in wa)
    # every rollout is kept, once: no duplicate steps after either resume, the same texts and scores
    sa = read_jsonl_gz(a / "ppo" / "samples.jsonl.gz")
    assert [r["step"] for r in sa] == [st for st in range(40) for _ in range(8)]
    assert read_jsonl_gz(b / "ppo" / "samples.jsonl.gz") == sa
    assert read_jsonl_gz(c / "ppo" / "samples.jsonl.gz") == sa


def test_nan_reward_stops_run_as_diverged(tiny_run, tmp_path, monkeypatch):
    import rlhf.ppo as ppo_mod
    run = copy_run(tiny_run, tmp_path)
    real = ppo_mod.score_texts
    calls = {"n": 0}

    def nan_after_three(*a, **kw):  # fault injection: the reward goes NaN at the 4th rollout
        calls["n"] += 1
        s = real(*a, **kw)
        return s * float("nan") if calls["n"] > 3 else s

    monkeypatch.setattr(ppo_mod, "score_texts", nan_after_three)
    with pytest.raises(Diverged):
        run_pipeline(ppo_cfg(tmp_path), force=True)
    st = read_json(run / "status.json")
    assert st["state"] == "diverged" and st["stage"] == "ppo" and st["step"] == 3
    assert "reward" in st["values"] and st["values"]["reward"][0] == "nan"
    assert (run / "ppo.tmp" / "checkpoints" / "step_000002" / "policy" / "model.safetensors").exists()
    assert not (run / "ppo" / "DONE").exists()


def test_reward_model_tokenizer_mismatch_is_refused(tiny_run, tmp_path):
    from rlhf.config import WorldConfig
    from rlhf.tokenizer import train_world_tokenizer
    run = copy_run(tiny_run, tmp_path)
    other = train_world_tokenizer(World(WorldConfig(seed=99, n_entities=12)))
    for f in run.joinpath("rm").glob("*token*"):
        f.unlink()
    other.save_pretrained(str(run / "rm"))
    p = _cli_ppo(tmp_path, [], force=True)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2
    assert "does not match the policy" in err
    assert not (run / "ppo.tmp" / "metrics.jsonl").exists()


def test_grad_clip_zero_is_no_clipping(tiny_run):
    """ppo.grad_clip=0 steps with the raw gradient: the same weights, bit for bit, as a clip
    too large to bind, and other weights than a clip that binds."""
    path, cfg = tiny_run
    tok = AutoTokenizer.from_pretrained(path / "sft")
    prompts = [p.text for p in World(cfg.world).train_prompts()[:6]]
    s = sample(load_causal_lm(str(path / "sft")), tok, prompts, max_new_tokens=6, seed=3, logprobs=True)
    m = s.response_mask.float()
    adv = torch.randn(m.shape, generator=torch.Generator().manual_seed(0)) * m * 100
    mb = Batch(s.prompt_ids, s.prompt_mask, s.response_ids, m, s.logprobs, s.logprobs, torch.zeros_like(m), adv,
               torch.zeros_like(m))
    after = {}
    for clip in (0.0, 1e9, 1e-3):
        policy = load_causal_lm(str(path / "sft"))
        policy.train()
        opt = torch.optim.SGD(policy.parameters(), lr=1e-2)
        pc = dataclasses.replace(cfg.ppo, grad_clip=clip)
        ppo_update(policy, mb, opt, pc, on_policy=True)
        after[clip] = torch.cat([p.detach().reshape(-1) for p in policy.parameters()])
    assert torch.equal(after[0.0], after[1e9])
    assert not torch.equal(after[0.0], after[1e-3])


def _critic_batch(path, cfg):
    """A minibatch of real samples with advantages, old values and returns, for a policy and critic update."""
    tok = AutoTokenizer.from_pretrained(path / "sft")
    prompts = [p.text for p in World(cfg.world).train_prompts()[:6]]
    s = sample(load_causal_lm(str(path / "sft")), tok, prompts, max_new_tokens=6, seed=3, logprobs=True)
    m = s.response_mask.float()
    g = torch.Generator().manual_seed(0)
    adv, ret, vals = (torch.randn(m.shape, generator=g) * m for _ in range(3))
    return Batch(s.prompt_ids, s.prompt_mask, s.response_ids, m, s.logprobs, s.logprobs, vals, adv, ret)


def _update(path, cfg, mb, critic_thread=None):
    """Two ppo_update calls (the on-policy one and the next) on fresh models; returns both
    models' weights and the statistics."""
    policy, critic = load_causal_lm(str(path / "sft")).train(), load_reward_model(str(path / "rm")).train()
    opt, copt = torch.optim.AdamW(policy.parameters(), lr=1e-2), torch.optim.AdamW(critic.parameters(), lr=1e-2)
    stats = [ppo_update(policy, mb, opt, cfg.ppo, critic=critic, critic_opt=copt, on_policy=i == 0, free_grads=True,
                        critic_thread=critic_thread) for i in range(2)]
    flat = lambda m: torch.cat([p.detach().reshape(-1) for p in m.parameters()])  # noqa: E731
    return flat(policy), flat(critic), stats


def test_parallel_critic_takes_the_same_steps_on_its_own_thread(tiny_run, monkeypatch):
    """ppo.parallel_critic: the critic's update runs on the critic thread with its share of
    the threads while the policy's runs here with the rest, and both models take the same
    steps, bit for bit, as one after the other at that thread count; the caller's count
    comes back."""
    import threading
    import rlhf.ppo as ppo_mod
    path, cfg = tiny_run
    mb = _critic_batch(path, cfg)
    seen = {"policy": [], "critic": []}
    real_values, real_policy = ppo_mod.critic_values, ppo_mod.policy_forward

    def values(*a, **k):  # where, and at how many threads, each model's forward passes run
        seen["critic"].append((threading.current_thread().name, torch.get_num_threads()))
        return real_values(*a, **k)

    def policy(*a, **k):
        seen["policy"].append((threading.current_thread().name, torch.get_num_threads()))
        return real_policy(*a, **k)
    monkeypatch.setattr(ppo_mod, "critic_values", values)
    monkeypatch.setattr(ppo_mod, "policy_forward", policy)
    here = threading.current_thread().name
    assert (CriticThread(3).policy_threads, CriticThread(3).critic_threads) == (2, 1)  # an odd count: the policy gets more
    try:
        torch.set_num_threads(2)
        sequential = _update(path, cfg, mb)
        assert set(seen["critic"]) == set(seen["policy"]) == {(here, 2)}
        seen["policy"].clear()
        seen["critic"].clear()
        torch.set_num_threads(4)
        ct = CriticThread(torch.get_num_threads())
        try:
            parallel = _update(path, cfg, mb, ct)
            assert torch.get_num_threads() == 4  # restored after each update
        finally:
            ct.close()
    finally:
        torch.set_num_threads(1)
    assert len(seen["critic"]) == 2 and all(name.startswith("ppo-critic") and n == 2 for name, n in seen["critic"])
    assert seen["policy"] == [(here, 2)] * 2
    assert torch.equal(sequential[0], parallel[0]) and torch.equal(sequential[1], parallel[1])
    assert sequential[2] == parallel[2] and {"vf_loss", "pg_loss"} <= set(parallel[2][0])
    assert not torch.equal(sequential[1], torch.cat([p.detach().reshape(-1) for p in
                                                    load_reward_model(str(path / "rm")).parameters()]))


def test_parallel_critic_error_reaches_the_caller(tiny_run, monkeypatch):
    """A failure on the critic thread is raised by ppo_update, after the policy's part, with
    the caller's threads restored."""
    import rlhf.ppo as ppo_mod
    path, cfg = tiny_run
    mb = _critic_batch(path, cfg)

    def boom(*a, **k):
        raise RuntimeError("critic failed")
    monkeypatch.setattr(ppo_mod, "critic_update", boom)
    torch.set_num_threads(2)
    ct = CriticThread(2)
    try:
        with pytest.raises(RuntimeError, match="critic failed"):
            _update(path, cfg, mb, ct)
        assert torch.get_num_threads() == 2
    finally:
        ct.close()
        torch.set_num_threads(1)


def test_parallel_critic_run_is_deterministic(tiny_run, tmp_path, monkeypatch):
    """A PPO stage with ppo.parallel_critic at two threads updates its critic on the critic
    thread, and two runs log the same numbers; at one thread, or with a value head instead
    of a critic, there is no critic thread."""
    import threading
    import rlhf.ppo as ppo_mod
    made, where = [], set()
    real_thread, real_update = ppo_mod.CriticThread, ppo_mod.critic_update

    class Spy(real_thread):
        def __init__(self, threads):
            made.append(threads)
            super().__init__(threads)

    def update(*a, **k):
        where.add(threading.current_thread().name.split("_")[0])
        return real_update(*a, **k)
    monkeypatch.setattr(ppo_mod, "CriticThread", Spy)
    monkeypatch.setattr(ppo_mod, "critic_update", update)

    def run(name, extra):
        run = copy_run(tiny_run, tmp_path / name)
        try:
            run_pipeline(ppo_cfg(tmp_path / name, ["ppo.parallel_critic=true", "ppo.steps=3", *extra]), force=True)
        finally:
            torch.set_num_threads(1)
        return _strip_time(read_jsonl(run / "ppo" / "metrics.jsonl"))
    rows = [run(str(i), ["threads=2"]) for i in range(2)]
    assert made == [2, 2] and where == {"ppo-critic"}
    assert len(rows[0]) == 3 and rows[0] == rows[1]
    made.clear()
    where.clear()
    run("one_thread", ["threads=1"])
    assert made == [] and where == {threading.current_thread().name.split("_")[0]}
    run("head", ["threads=2", "ppo.critic=head"])
    assert made == []


@pytest.mark.parametrize("extra", [[], ["threads=2", "ppo.parallel_critic=true"]])
def test_one_minibatch_reuses_the_critics_rollout_forward_and_changes_no_number(tiny_run, tmp_path, monkeypatch, extra):
    """With one minibatch per epoch the separate critic's rollout forward (the old values) is
    also its first update's forward (PPORun.reuse_values): one critic forward per iteration
    fewer, and the run logs the same numbers and saves the same weights, bit for bit, as
    with the second forward (serially, and with the critic on its own thread)."""
    from safetensors.torch import load_file
    import rlhf.ppo as ppo_mod
    calls = []
    real_values, real_init = ppo_mod.critic_values, ppo_mod.PPORun.__init__
    monkeypatch.setattr(ppo_mod, "critic_values", lambda *a, **k: calls.append(1) or real_values(*a, **k))

    def run(name, reuse):
        def init(self, *a, **k):
            real_init(self, *a, **k)
            assert self.reuse_values
            self.reuse_values = reuse
        monkeypatch.setattr(ppo_mod.PPORun, "__init__", init)
        calls.clear()
        run = copy_run(tiny_run, tmp_path / name)
        try:
            run_pipeline(ppo_cfg(tmp_path / name, ["ppo.steps=3", "ppo.minibatch_size=8", *extra]), force=True)
        finally:
            torch.set_num_threads(1)
        ck = sorted((run / "ppo" / "critic").glob("*.safetensors")) + sorted((run / "ppo").glob("*.safetensors"))
        return _strip_time(read_jsonl(run / "ppo" / "metrics.jsonl")), len(calls), [load_file(f) for f in ck]
    (rows, n_reuse, w_reuse), (rows2, n_twice, w_twice) = run("reuse", True), run("twice", False)
    assert len(rows) == 3 and rows == rows2
    assert n_twice == 3 * (1 + 2) and n_reuse == 3 * 2  # 3 iterations: rollout + 2 epochs, or the rollout's reused
    assert w_reuse and all(a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
                           for a, b in zip(w_reuse, w_twice))
