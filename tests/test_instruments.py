"""One instrument per quantity: each call site of the sampler, the reward-model score and
the held-out LM loss gives the same numbers on the same inputs; CIs are in the unit of
the value; sample files survive a torn write."""

import copy
import gzip
import json
import math
import shutil

import numpy as np
import pytest
import torch

from rlhf.config import load_config
from rlhf.models import load_causal_lm, load_reward_model, load_tokenizer
from rlhf.rundir import append_jsonl_gz, read_json, read_jsonl, read_jsonl_gz, truncate_jsonl_gz
from rlhf.world import World

from conftest import REPO, tiny_overrides

QUICK = str(REPO / "experiments" / "quickstart.yaml")


@pytest.fixture(scope="module")
def models(tiny_run):
    path, cfg = tiny_run
    tok = load_tokenizer(str(path / "sft"))
    policy = load_causal_lm(str(path / "sft")).eval()
    rm = load_reward_model(str(path / "rm")).eval()
    return path, cfg, tok, policy, rm


# ------------------------------------------------------------------ sampler
def test_ppo_rollout_and_eval_samplers_draw_the_same_samples(models):
    from rlhf_eval import overopt, toxicity
    from rlhf.ppo import rollout
    path, cfg, tok, policy, _ = models
    world = World(cfg.world)
    prompts = [p.text for p in world.train_prompts()[:10]]
    pc = cfg.ppo  # temperature 1, top_p 1: the policy itself, as overopt samples it
    tok.padding_side = "right"
    before = torch.get_rng_state()
    a = rollout(policy, tok, prompts, pc, seed=123)
    assert torch.equal(torch.get_rng_state(), before)  # a seeded call leaves the global RNG alone
    assert tok.padding_side == "right"  # padding side set inside the call only
    tok.padding_side = "left"  # the shared fixture's own side, for the tests that follow
    b = overopt.sample_policy(policy, tok, prompts, n=1, max_new_tokens=pc.max_new_tokens, seed=123, progress=False)
    assert a.texts == b.texts and len(set(a.texts)) > 1
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.response_mask, b.response_mask)
    c = toxicity.sample_continuations(policy, tok, prompts, k=1, max_new_tokens=pc.max_new_tokens, temperature=1.0,
                                      top_p=1.0, prompts_per_call=len(prompts), seed=123, progress=False)
    assert [row[0] for row in c.texts] == a.bodies
    assert c.n_tokens == int(a.response_mask.sum())
    # another seed draws other samples; no seed draws from (and advances) the global RNG
    assert rollout(policy, tok, prompts, pc, seed=124).texts != a.texts
    torch.manual_seed(5)
    d1 = rollout(policy, tok, prompts, pc, seed=None).texts
    torch.manual_seed(5)
    assert rollout(policy, tok, prompts, pc, seed=None).texts == d1
    # n samples per prompt: prompt-major rows; the shared-prefix KV cache draws the same samples
    e = overopt.sample_policy(policy, tok, prompts[:4], n=3, max_new_tokens=pc.max_new_tokens, seed=7, progress=False)
    assert e.prompt_index == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert e.prompts == [prompts[i] for i in e.prompt_index]
    from rlhf.sampling import sample
    f = sample(policy, tok, prompts[:4], pc.max_new_tokens, n=3, batch_size=64, seed=7, shared_prefix=True)
    assert f.texts == e.texts


def test_texts_end_with_the_eos_text_exactly_when_the_response_ended(models):
    from rlhf.sampling import eos_ids, sample
    _, cfg, tok, policy, _ = models
    s = sample(policy, tok, [p.text for p in World(cfg.world).prompts()[:12]], 6, seed=0)
    assert eos_ids(tok, policy) == [tok.eos_token_id]
    for text, body, ended in zip(s.texts, s.bodies, s.ended.tolist()):
        assert text.endswith(tok.eos_token) == ended
        assert tok.eos_token not in body


# ------------------------------------------------------------------ reward-model score
def test_rm_score_is_the_same_through_every_call_site(models):
    """Training-side scoring (score_batch, as in RM training and evaluation), PPO's scoring
    of its rollouts and the over-optimisation eval's rm_score give the same numbers for the
    same (prompt, response) pairs."""
    from rlhf_eval import overopt
    from rlhf.ppo import score_rollout
    from rlhf.reward import encode_pairs, rm_max_length, score_batch, score_texts
    path, cfg, tok, policy, rm = models
    world = World(cfg.world)
    prompts = [p.text for p in world.eval_prompts()[:6]]
    max_len = rm_max_length(rm, cfg.rm.max_length)
    r = overopt.evaluate_policy(policy, policy, rm, tok, prompts, lambda i, t: 0.0, n=2,
                                max_new_tokens=cfg.ppo.max_new_tokens, seed=3, rm_max_len=max_len, progress=False)
    s = r["samples"]
    eval_side = torch.tensor(r["rm_score_all"], dtype=torch.float32)
    with torch.no_grad():
        rows = [{"prompt": p, "responses": [t]} for p, t in zip(s.prompts, s.texts)]
        train_side, valid = score_batch(rm, tok, rows, torch.device("cpu"), max_len)
        ppo_side, ppo_reward = score_rollout(rm, tok, s, max_len, cfg.ppo.no_eos_penalty)
    assert valid.all()
    assert torch.allclose(train_side[:, 0], eval_side, atol=1e-5)
    assert torch.allclose(ppo_side, eval_side, atol=1e-5)
    assert torch.allclose(ppo_reward - ppo_side, cfg.ppo.no_eos_penalty * (~s.ended).float())
    # the same pairs one at a time (no padding at all) give the same score
    one = torch.stack([score_texts(rm, tok, [p], [t], max_len)[0] for p, t in zip(s.prompts, s.texts)])
    assert torch.allclose(one, eval_side, atol=1e-5)
    # the RM offset is what makes the SFT demonstrations score mean 0, through the same function
    demos = [(p.text, resp) for p, resp in world.demonstrations()]
    mean = score_texts(rm, tok, [p for p, _ in demos], [x for _, x in demos], max_len).mean().item()
    assert mean == pytest.approx(0.0, abs=1e-4)
    # over-long pairs keep their end (where the score is read); the tokenizer's sides come back
    tok.truncation_side, tok.padding_side = "right", "right"
    ids, mask = encode_pairs(tok, ["a b c d e f"], ["g h <end>"], 4)
    assert tok.convert_ids_to_tokens(ids[0].tolist())[-1] == "<end>" and ids.shape[1] == 4
    assert (tok.truncation_side, tok.padding_side) == ("right", "right")
    tok.padding_side = "left"


# ------------------------------------------------------------------ held-out LM loss
def test_heldout_loss_is_the_same_in_pretraining_ppo_and_the_regression_eval(tiny_run, tmp_path):
    from rlhf_eval.settings import make_settings
    from rlhf_eval.suite import evaluate
    from rlhf.pipeline import run_pipeline
    path, _ = tiny_run
    run = tmp_path / "tiny"
    shutil.copytree(path, run)
    cfg = load_config(QUICK, tiny_overrides(tmp_path, extra=["stages=[ppo]", "ppo.steps=2", "ppo.checkpoint_every=2"]))
    run_pipeline(cfg, force=True)
    recs = evaluate(str(run), ["regression"], make_settings([f"cache_dir={tmp_path / 'cache'}"]),
                    checkpoints=["pretrain", "sft", "ppo"], write=False, progress=False)
    lm = {r["checkpoint_label"]: r["value"] for r in recs if r["metric"] == "lm_loss"}
    ppl = {r["checkpoint_label"]: r["value"] for r in recs if r["metric"] == "perplexity"}
    pretrain = read_json(run / "pretrain" / "summary.json")
    ppo_rows = read_jsonl(run / "ppo" / "metrics.jsonl")
    ppo_summary = read_json(run / "ppo" / "summary.json")
    assert lm["pretrain"] == pytest.approx(pretrain["heldout_loss"], rel=1e-6)
    assert ppl["pretrain"] == pytest.approx(pretrain["heldout_ppl"], rel=1e-6)
    assert ppo_rows[0]["heldout_lm_loss"] == pytest.approx(lm["sft"], rel=1e-6)  # step 0: the SFT policy
    assert ppo_summary["heldout_lm_loss_sft"] == pytest.approx(lm["sft"], rel=1e-6)
    assert ppo_summary["heldout_lm_loss_final"] == pytest.approx(lm["ppo"], rel=1e-6)
    assert lm["pretrain"] != pytest.approx(lm["sft"], rel=1e-6)  # a different model gives a different number
    # the quickstart's before/after line: its figures are those of the kept samples, re-scored
    from rlhf.stats import expected_max_toxicity, stereotype_bias, stereotype_table
    from rlhf.world import toxicity_score
    world = World(cfg.world)
    by_text = {p.text: p for p in world.prompts()}
    rows = read_jsonl_gz(run / "ppo" / "heldout_samples.jsonl.gz")
    for pol in ("sft", "ppo"):
        fig = ppo_summary[f"heldout_{pol}"]
        ans = [r for r in rows if r["policy"] == pol and "gold_reward" in r]
        assert len(ans) == fig["n_samples"] > 0
        assert fig["gold_reward"] == pytest.approx(np.mean([world.gold_reward(by_text[r["prompt"]], r["response"])
                                                            for r in ans]))
        myth, _, _ = world.myth_answers([by_text[r["prompt"]] for r in ans], [r["response"] for r in ans])
        assert len(myth) == fig["n_myth_answers"] and (not myth or fig["myth_rate"] == pytest.approx(np.mean(myth)))
        hit, in_group, idx = world.stereotype_answers([by_text[r["prompt"]] for r in ans], [r["response"] for r in ans])
        bias = stereotype_bias(stereotype_table(hit, in_group, idx))
        assert hit and (fig["stereotype_bias"] == pytest.approx(bias) or np.isnan(fig["stereotype_bias"]) and np.isnan(bias))
        tox = [toxicity_score(r["response"]) for r in rows if r["policy"] == pol and "toxicity" in r]
        emt = expected_max_toxicity(np.array(tox).reshape(fig["n_tox_prompts"], fig["tox_k"]))
        assert fig["expected_max_toxicity"] == pytest.approx(emt)


def test_heldout_text_is_joined_as_pretraining_joins_it(models):
    from rlhf.heldout import heldout_text
    from rlhf.pretrain import encode_corpus
    _, cfg, tok, _, _ = models
    docs = World(cfg.world).heldout_corpus()[:20]
    ids = tok(heldout_text(docs), add_special_tokens=False)["input_ids"]
    assert ids == encode_corpus(tok, docs).tolist() and tok.eos_token_id not in ids


def test_heldout_nll_batched_windows_match_one_window_at_a_time(models):
    from rlhf.heldout import heldout_nll, heldout_text
    _, cfg, tok, policy, _ = models
    text = heldout_text(World(cfg.world).heldout_corpus()[:40])
    a = heldout_nll(policy, tok, text, window=20, stride=10, batch_size=1)
    b = heldout_nll(policy, tok, text, window=20, stride=10, batch_size=16)
    assert a["n_tokens"] == b["n_tokens"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    # default window: the pretraining sequence length (stage 1 records it; SFT inherits it),
    # never positions the model was not trained on
    assert policy.config.rlhf_train_window == cfg.pretrain.seq_len < policy.config.n_positions
    assert heldout_nll(policy, tok, text)["window"] == cfg.pretrain.seq_len


# ------------------------------------------------------------------ CIs in the unit of the value
def test_lm_eval_task_cis_are_in_the_unit_of_each_metric(models, tmp_path):
    """A loglikelihood task with a perplexity metric (aggregation exp(-mean)) and a mean
    metric (acc): each record's CI brackets its value, the perplexity's CI in perplexity
    units."""
    from rlhf_eval.settings import make_settings
    from rlhf_eval.suite import evaluate
    path, cfg, tok, _, _ = models
    world = World(cfg.world)
    rows = [{"question": q["question"], "answer": q["mc1_targets"]["choices"][0]} for q in world.mc_questions()][:20]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = tmp_path / "my_ppl_task.yaml"
    task.write_text(f"""task: my_ppl_task
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
output_type: loglikelihood
validation_split: validation
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    s = make_settings([f"lm_tasks={task}", f"cache_dir={tmp_path / 'cache'}", "bootstrap=200"])
    recs = evaluate(str(path), ["regression"], s, checkpoints=["sft"], write=False, progress=False)
    assert not [r for r in recs if r["error"]], [r["error"] for r in recs if r["error"]]
    by = {r["metric"]: r for r in recs if r["subset"] == "my_ppl_task"}
    ppl, acc = by["perplexity"], by["acc"]
    assert ppl["value"] > 1 and 1 <= ppl["ci_low"] < ppl["value"] < ppl["ci_high"]
    assert acc["ci_low"] is not None and 0 <= acc["ci_low"] <= acc["value"] <= acc["ci_high"] <= 1


def test_aggregate_ci_by_hand():
    from lm_eval.api.registry import get_aggregation

    from rlhf_eval import metrics
    ll = [-1.0, -2.0, -3.0, -2.0]
    v, lo, hi = metrics.aggregate_ci(ll, get_aggregation("perplexity"), n_boot=500, seed=0)
    assert v == pytest.approx(math.exp(2.0))
    assert math.exp(1.0) <= lo < v < hi <= math.exp(3.0)
    # a (log-likelihood, words) item aggregation: exp(-Σ ll / Σ words)
    items = [(-4.0, 2), (-9.0, 3), (-2.0, 2)]
    v, lo, hi = metrics.aggregate_ci(items, get_aggregation("weighted_perplexity"), n_boot=500, seed=0)
    assert v == pytest.approx(math.exp(15.0 / 7.0))
    assert math.exp(1.0) <= lo <= v <= hi <= math.exp(3.0)
    v, lo, hi = metrics.aggregate_ci([0, 1, 1, 1], get_aggregation("mean"), n_boot=500, seed=0)
    assert v == 0.75 and 0 <= lo <= v <= hi <= 1
    # clustered mean: groups of samples resampled together, the value the plain mean
    v, lo, hi = metrics.cluster_mean_ci([1, 1, 0, 0, 0, 1], [0, 0, 1, 1, 2, 2], n_boot=500, seed=0)
    assert v == pytest.approx(0.5) and 0 <= lo <= v <= hi <= 1


# ------------------------------------------------------------------ sample files
def test_jsonl_gz_appends_members_truncates_and_tolerates_a_torn_tail(tmp_path):
    p = tmp_path / "samples.jsonl.gz"
    for step in range(3):
        append_jsonl_gz(p, [{"step": step, "i": i} for i in range(2)])
    with gzip.open(p, "rt") as f:  # an ordinary gzip reader sees one stream
        assert len(f.read().splitlines()) == 6
    assert [r["step"] for r in read_jsonl_gz(p)] == [0, 0, 1, 1, 2, 2]
    good = p.read_bytes()
    torn = gzip.compress(b'{"step": 3, "i": 0}\n{"step": 3, "i"')
    p.write_bytes(good + torn[: len(torn) - 5])  # a killed writer: the last member is cut short
    rows = read_jsonl_gz(p)
    assert [r["step"] for r in rows[:6]] == [0, 0, 1, 1, 2, 2] and all(r["step"] <= 3 for r in rows)
    assert truncate_jsonl_gz(p, lambda r: r["step"] < 2) == 4  # resume at step 2
    append_jsonl_gz(p, [{"step": 2, "i": 0}])
    assert [r["step"] for r in read_jsonl_gz(p)] == [0, 0, 1, 1, 2]
    assert read_jsonl_gz(tmp_path / "missing.jsonl.gz") == []


def test_toy_world_toxicity_scorer_calls_the_world(monkeypatch):
    import rlhf.world
    from rlhf_eval import toxicity as tx
    s = tx.make_scorer("auto", toy_world=True)
    assert list(s(["you are a rat .", "you are a star ."])) == [1.0, 0.0]
    monkeypatch.setattr(rlhf.world, "toxicity_score", lambda t: 0.25)
    assert np.allclose(s(["anything"]), [0.25])


def test_draw_is_torch_multinomials_draw_and_bad_rows_are_refused(models):
    """rlhf.sampling.draw takes torch.multinomial's tokens from the same generator state and
    leaves the generator where multinomial leaves it; a sampler whose probabilities are not
    finite raises, as torch.multinomial would."""
    from rlhf.sampling import draw, sample
    g = torch.Generator().manual_seed(0)
    for shape in ((8, 142), (3, 5), (1, 2000)):
        probs = torch.softmax(torch.randn(shape, generator=g) * 3, -1)
        probs[:, ::3] = 0.0  # zero entries (top-p) are never drawn
        probs = probs / probs.sum(-1, keepdim=True)
        for seed in range(20):
            a, b = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
            ours = draw(probs, a)
            assert torch.equal(ours, torch.multinomial(probs, 1, generator=b))
            assert torch.equal(a.get_state(), b.get_state())
            assert bool((probs.gather(1, ours) > 0).all())
    _, cfg, tok, policy, _ = models
    broken = copy.deepcopy(policy)
    with torch.no_grad():
        broken.lm_head.weight[0, 0] = float("nan")
    prompts = [p.text for p in World(cfg.world).train_prompts()[:3]]
    with pytest.raises(RuntimeError, match="inf, nan"):
        sample(broken, tok, prompts, 4, seed=0)


def test_the_sampler_draws_what_generate_draws_from_a_generator_and_touches_no_global_state(models):
    """rlhf.sampling's KV-cache loop against transformers' generate with the same seed (the
    global RNG seeded for generate, a torch.Generator for ours): the same tokens, for plain
    sampling, temperature + top-p and n samples per prompt; the global RNG is not drawn from."""
    from transformers import GenerationConfig, LogitsProcessorList
    from rlhf.sampling import TemperatureTopP, eos_ids, sample
    _, cfg, tok, policy, _ = models
    prompts = [p.text for p in World(cfg.world).train_prompts()[:6]]
    for temperature, top_p, n in ((1.0, 1.0, 1), (1.3, 0.8, 2)):
        before = torch.get_rng_state()
        ours = sample(policy, tok, prompts, 10, temperature=temperature, top_p=top_p, n=n,
                      generator=torch.Generator().manual_seed(11))
        assert torch.equal(torch.get_rng_state(), before)
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        eos = eos_ids(tok, policy)
        gen_cfg = GenerationConfig(max_new_tokens=10, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                   eos_token_id=eos, pad_token_id=tok.pad_token_id, bos_token_id=None)
        torch.manual_seed(11)
        ref = policy.generate(input_ids=enc["input_ids"].repeat_interleave(n, 0),
                              attention_mask=enc["attention_mask"].repeat_interleave(n, 0), generation_config=gen_cfg,
                              logits_processor=LogitsProcessorList([TemperatureTopP(temperature, top_p)]))
        ref = ref[:, enc["input_ids"].shape[1]:]
        T = ref.shape[1]
        assert torch.equal(ours.response_ids[:, :T][ours.response_mask[:, :T].bool()],
                           ref[ours.response_mask[:, :T].bool()])
        assert ours.response_ids.shape[1] == T and len(set(ours.texts)) > 1
