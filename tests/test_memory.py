"""Memory switches: LoRA (the reference is the base model with adapters off, merged saves,
bit-exact resume), autocast (first minibatch ratio 1, fp16 refused on a CPU), gradient
checkpointing (same gradients)."""

import subprocess

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

import rlhf.ppo as ppo_mod
from rlhf import stop
from rlhf.config import ConfigError
from rlhf.losses import masked_mean
from rlhf.models import (adapters_disabled, add_lora, autocast, load_causal_lm, merged_state_dict, save_hf,
                         set_gradient_checkpointing)
from rlhf.pipeline import run_pipeline
from rlhf.ppo import Batch, policy_forward, ppo_update
from rlhf.rundir import read_json, read_jsonl, read_jsonl_gz
from rlhf.sampling import sample
from rlhf.world import World

from conftest import QUICKSTART as QUICK, REPO, copy_run, ppo_cfg, rlhf_cmd, tiny_overrides



def _rollout(tiny_run, n=6):
    path, cfg = tiny_run
    tok = AutoTokenizer.from_pretrained(path / "sft")
    policy = load_causal_lm(str(path / "sft"))
    prompts = [p.text for p in World(cfg.world).train_prompts()[:n]]
    return policy, sample(policy, tok, prompts, max_new_tokens=6, seed=3, logprobs=True)


def test_lora_reference_is_the_base_model_and_saves_merge_into_a_plain_model(tiny_run, tmp_path):
    """Adapters start at zero (the policy is the SFT model); with them disabled the model is
    the base bit for bit after they train; a save is a plain causal LM with W + (α/r)·B·A,
    whose logits are the adapted model's; only the adapters train."""
    path, _ = tiny_run
    base = load_causal_lm(str(path / "sft"))
    policy = add_lora(load_causal_lm(str(path / "sft")), r=4, alpha=8.0, target_modules=[], seed=1)
    ids = torch.randint(3, 60, (3, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = base(input_ids=ids).logits
        assert torch.equal(policy(input_ids=ids).logits, want)  # B = 0 at the start
        trained = [p for p in policy.parameters() if p.requires_grad]
        assert trained and all(".lora_" in n for n, p in policy.named_parameters() if p.requires_grad)
        for p in trained:
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        adapted = policy(input_ids=ids).logits
        assert (adapted - want).abs().max() > 1e-3
        with adapters_disabled(policy) as ref:
            assert torch.equal(ref(input_ids=ids).logits, want)
        assert torch.equal(policy(input_ids=ids).logits, adapted)  # back on after the block
    assert not [k for k in merged_state_dict(policy) if "lora" in k or "base_layer" in k]
    save_hf(policy, None, tmp_path / "merged")
    assert not list((tmp_path / "merged").glob("adapter*"))
    plain = load_causal_lm(str(tmp_path / "merged"))
    assert not any("lora" in n for n, _ in plain.named_parameters())
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, adapted, atol=1e-5)
    assert torch.equal(policy(input_ids=ids).logits, adapted)  # saving did not merge into the model


def test_lora_ppo_resumes_bit_exactly_and_keeps_one_copy(tiny_run, tmp_path, monkeypatch):
    """LoRA on the policy and the critic, with gradient checkpointing: a run stopped after a
    checkpoint and resumed gives the uninterrupted run's metrics, samples and saved models;
    checkpoints hold the adapters only, π_SFT is no second model, and the saved policies
    (final and KL levels) load as plain causal LMs."""
    extra = ["ppo.lora_r=4", "ppo.lora_alpha=16", "ppo.critic_lora=true", "model.gradient_checkpointing=true",
             "ppo.lr=1e-2", "ppo.kl_levels=[1e-4]"]
    refs = []
    orig_init = ppo_mod.PPORun.__init__

    def init(self, *a, **k):
        orig_init(self, *a, **k)
        refs.append(self.ref)
    monkeypatch.setattr(ppo_mod.PPORun, "__init__", init)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = copy_run(tiny_run, tmp_path / "a"), copy_run(tiny_run, tmp_path / "b")
    run_pipeline(ppo_cfg(tmp_path / "a", extra), force=True)
    assert refs == [None]

    orig_step = ppo_mod.PPORun.step

    def step(self, i):
        orig_step(self, i)
        if i == 1:
            stop.request_stop("test")  # honoured at the end of the next iteration: step_000003, then stop
    monkeypatch.setattr(ppo_mod.PPORun, "step", step)
    with pytest.raises(stop.StopRequested):
        run_pipeline(ppo_cfg(tmp_path / "b", extra), force=True)
    ck = b / "ppo.tmp" / "checkpoints" / "step_000003"
    assert (ck / "policy_lora.safetensors").exists() and (ck / "critic_lora.safetensors").exists()
    assert not (ck / "policy").exists() and not (ck / "critic").exists()
    assert any(k.startswith("score.") for k in load_file(ck / "critic_lora.safetensors"))
    monkeypatch.setattr(ppo_mod.PPORun, "step", orig_step)
    run_pipeline(ppo_cfg(tmp_path / "b", extra))

    strip = lambda rows: [{k: v for k, v in r.items() if k != "time_s"} for r in rows]  # noqa: E731
    ra, rb = read_jsonl(a / "ppo" / "metrics.jsonl"), read_jsonl(b / "ppo" / "metrics.jsonl")
    assert len(ra) == 6 and strip(ra) == strip(rb)
    assert ra[-1]["kl"] > 1e-4  # the adapters trained: the policy moved away from π_SFT
    assert read_jsonl_gz(a / "ppo" / "samples.jsonl.gz") == read_jsonl_gz(b / "ppo" / "samples.jsonl.gz")
    for f in ("model.safetensors", "critic/model.safetensors"):
        wa, wb = load_file(a / "ppo" / f), load_file(b / "ppo" / f)
        assert set(wa) == set(wb) and all(torch.equal(wa[k], wb[k]) for k in wa)
        assert not [k for k in wa if "lora" in k]
    load_causal_lm(str(a / "ppo"))
    assert read_json(a / "ppo" / "summary.json")["kl_checkpoints"] == [1e-4]
    load_causal_lm(str(next((a / "ppo" / "kl").iterdir())))


def test_bf16_autocast_first_minibatch_ratio_is_one(tiny_run):
    """Under bf16 autocast the log-probs are float32, the first update of an iteration has
    ratio exactly 1, and the old log-probs PPORun.score takes under autocast (a forward
    pass, not the sampler's) are the update forward's own for the same weights."""
    _, cfg = tiny_run
    policy, s = _rollout(tiny_run)
    m = s.response_mask.float()
    amp = lambda: autocast(torch.device("cpu"), "bf16")  # noqa: E731
    with torch.no_grad(), amp():
        logp, logits, _ = policy_forward(policy, s.prompt_ids, s.prompt_mask, s.response_ids, s.response_mask)
    assert logp.dtype == torch.float32 and logits.dtype == torch.bfloat16
    with torch.no_grad():
        full = policy_forward(policy, s.prompt_ids, s.prompt_mask, s.response_ids, s.response_mask)[0]
    assert 0 < (logp - full).abs().max() < 0.5  # a different precision path, close to float32's
    adv = torch.randn(m.shape, generator=torch.Generator().manual_seed(0)) * m
    mb = Batch(s.prompt_ids, s.prompt_mask, s.response_ids, m, logp, logp, torch.zeros_like(m), adv,
               torch.zeros_like(m))
    opt = torch.optim.SGD(policy.parameters(), lr=0.0)
    st = ppo_update(policy, mb, opt, cfg.ppo, on_policy=True, amp=amp)
    assert st["approx_kl"] == 0.0 and st["clipfrac"] == 0.0
    assert st["pg_loss"] == -masked_mean(adv, m).item()
    off = ppo_update(policy, mb, opt, cfg.ppo, amp=amp)  # π_old from the same bf16 forward: ratio 1 again
    assert off["approx_kl"] == 0.0 and off["clipfrac"] == 0.0


def test_gradient_checkpointing_gives_the_same_gradients(tiny_run, monkeypatch):
    """Checkpointing recomputes the same floats: transformers' forward with and without it give
    the same gradients bit for bit. (A checkpointed model never takes the lean GPT-2 path,
    whose last block runs on the response's rows only and so rounds its weight gradients
    differently: ``rlhf.gpt2.blocks``; the lean path is off for both here.)"""
    from rlhf import gpt2
    monkeypatch.setattr(gpt2, "eligible", lambda model: False)
    _, cfg = tiny_run
    grads = []
    for on in (False, True):
        policy, s = _rollout(tiny_run)
        set_gradient_checkpointing(policy, on)
        policy.train()
        m = s.response_mask.float()
        adv = torch.randn(m.shape, generator=torch.Generator().manual_seed(0)) * m
        mb = Batch(s.prompt_ids, s.prompt_mask, s.response_ids, m, s.logprobs, s.logprobs, torch.zeros_like(m), adv,
                   torch.zeros_like(m))
        ppo_update(policy, mb, torch.optim.SGD(policy.parameters(), lr=0.0), cfg.ppo, on_policy=True)
        grads.append(torch.cat([p.grad.reshape(-1) for p in policy.parameters()]))
    assert grads[0].abs().max() > 0
    assert torch.equal(grads[0], grads[1])  # recomputed activations are the same floats


def test_autocast_fp16_on_cpu_and_lora_dropout_are_refused(tiny_run, tmp_path):
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        ppo_cfg(tmp_path, ["model.autocast=fp16", "device=cpu"])
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        autocast(torch.device("cpu"), "fp16")
    with pytest.raises(ConfigError, match="ppo.lora_dropout.*ratio"):
        ppo_cfg(tmp_path, ["ppo.lora_dropout=0.1"])
    with pytest.raises(ConfigError, match="ppo.critic_lora"):
        ppo_cfg(tmp_path, ["ppo.critic_lora=true"])
    if not torch.cuda.is_available():  # device=auto resolves to the CPU: exit 2 before any compute
        p = subprocess.run(rlhf_cmd() + ["run", QUICK] + tiny_overrides(tmp_path, "fresh", ["model.autocast=fp16"]),
                           cwd=REPO, capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and "model.autocast=fp16 needs a CUDA device" in p.stderr, p.stderr[-2000:]
        assert not list((tmp_path / "fresh").glob("pretrain*"))


@pytest.mark.parametrize("extra", [["model.autocast=bf16"], ["ppo.lora_r=4", "ppo.critic=head", "model.autocast=bf16"]])
def test_ppo_runs_under_autocast_and_lora_with_a_value_head(tiny_run, tmp_path, extra):
    """run_ppo itself on the tiny run's SFT policy and RM (model.autocast shapes the SFT
    stage too, so the pipeline would not reuse them under another value)."""
    from rlhf.rundir import RunDir
    path, _ = tiny_run
    cfg = ppo_cfg(tmp_path, ["ppo.steps=2", *extra])
    tok = AutoTokenizer.from_pretrained(path / "sft")
    rd = RunDir(tmp_path / "run")
    ppo_mod.run_ppo(cfg, rd, str(path / "sft"), str(path / "rm"), tok, World(cfg.world), torch.device("cpu"))
    rows = read_jsonl(rd.path / "ppo.tmp" / "metrics.jsonl")
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor([r["ppo_reward"], r["kl"], r["vf_loss"]])).all()
                                  for r in rows)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the first rollout is π_SFT's: log π = log π_SFT
    load_causal_lm(str(rd.path / "ppo.tmp"))


def test_pretrain_autocast_bf16_trains_in_bf16_and_saves_float32(tmp_path):
    """pretrain.autocast=bf16 runs pretraining's forward passes in bf16 (the weights it
    reaches differ from float32's, from the same seed and batches) with a finite float32
    loss, and saves float32 weights; a value other than none/bf16 is refused, naming the key."""
    from rlhf.config import load_config
    with pytest.raises(ConfigError, match="pretrain.autocast"):
        load_config(QUICK, tiny_overrides(tmp_path, extra=["pretrain.autocast=fp16"]))
    weights, losses = {}, {}
    for mode in ("none", "bf16"):
        cfg = load_config(QUICK, tiny_overrides(tmp_path, f"pt_{mode}", ["stages=[pretrain]", "pretrain.steps=8",
                                                                       f"pretrain.autocast={mode}"]))
        path = run_pipeline(cfg)
        weights[mode] = load_file(path / "pretrain" / "model.safetensors")
        losses[mode] = [r["loss"] for r in read_jsonl(path / "pretrain" / "metrics.jsonl")]
    assert all(w.dtype == torch.float32 for w in weights["bf16"].values())
    assert all(torch.isfinite(torch.tensor(v)).all() for v in losses.values())
    assert losses["bf16"][0] != losses["none"][0]  # the first loss (same weights, same batch) is bf16's
    assert abs(losses["bf16"][0] - losses["none"][0]) < 0.05  # ... and close to float32's
    assert any(not torch.equal(weights["none"][k], weights["bf16"][k]) for k in weights["none"])


def test_bf16_pretraining_warns_on_a_cpu_without_native_bf16(tmp_path, monkeypatch, capsys):
    """native_bf16 reads the CPU flags (AVX512-BF16 or AMX-BF16; None when there are none to
    read), and pretrain.autocast=bf16 on a CPU without them says it will be slower there."""
    from rlhf import models, pretrain
    from rlhf.config import load_config
    cpu = torch.device("cpu")
    assert models.native_bf16(cpu, "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n") is True
    assert models.native_bf16(cpu, "flags\t\t: fpu sse avx2 amx_tile amx_bf16\n") is True
    assert models.native_bf16(cpu, "flags\t\t: fpu sse avx2 avx512f\n") is False
    assert models.native_bf16(cpu, "Hardware\t: something\n") is None
    monkeypatch.setattr(pretrain, "native_bf16", lambda device: False)
    cfg = load_config(QUICK, tiny_overrides(tmp_path, "warn", ["stages=[pretrain]", "pretrain.steps=2",
                                                              "pretrain.autocast=bf16"]))
    run_pipeline(cfg)
    assert "pretrain.autocast=bf16 on a cpu without native bf16" in capsys.readouterr().err
