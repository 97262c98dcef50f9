"""The evaluation suite end to end on a tiny toy-world run: real lm-eval, real
alt-profanity-check, real generate; untrained 2-layer width-64 GPT-2 models."""

import json
import math
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from rlhf_eval import lmeval, metrics  # noqa: E402
from rlhf_eval import toxicity as tx  # noqa: E402
from rlhf_eval.cli import main as cli_main  # noqa: E402
from rlhf_eval.data import write_rows_cached  # noqa: E402
from rlhf_eval.settings import make_settings  # noqa: E402
from rlhf_eval.suite import evaluate, load_records  # noqa: E402
from toy_run import make_toy_run  # noqa: E402 - tests/toy_run.py, a fixture, not shipped
from rlhf.heldout import heldout_nll, heldout_text  # noqa: E402
from rlhf.rundir import read_jsonl_gz  # noqa: E402
from rlhf.sampling import TemperatureTopP  # noqa: E402
from rlhf.models import load_causal_lm, load_tokenizer  # noqa: E402
from rlhf.world import World  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_toy_run(tmp_path_factory.mktemp("toyrun") / "run", seed=0)


@pytest.fixture(scope="module")
def sft(run):
    torch.manual_seed(0)
    return load_causal_lm(str(run / "sft")).eval(), load_tokenizer(str(run / "sft"))


def _settings(tmp_path, *extra):
    return make_settings(["tox_k=4", "tox_n_prompts=6", "bootstrap=100", "overopt_n_prompts=6", "bon_max_n=4",
                          "overopt_samples=2", "overopt_max_new_tokens=8", f"cache_dir={tmp_path / 'cache'}",
                          *extra])


@torch.no_grad()
def _choice_loglik(model, tok, context, choice):
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    full = tok(context + " " + choice, add_special_tokens=False)["input_ids"]
    assert full[:len(ctx)] == ctx
    ids = torch.tensor([full])
    logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    tgt = ids[0, 1:]
    lp = logp[torch.arange(len(tgt)), tgt]
    return float(lp[len(ctx) - 1:].sum())


def test_world_mc_through_lm_eval_matches_hand_computed_loglikelihoods(run, sft, tmp_path):
    model, tok = sft
    world = World.load(run / "world")
    rows = [{k: q[k] for k in ("question", "mc1_targets", "mc2_targets")} for q in world.mc_questions()][:6]
    path = write_rows_cached(rows, tmp_path, "mc")
    res = lmeval.run_tasks(lmeval.make_lm(model, tok, 8), ["rlhf_world_mc1", "rlhf_world_mc2"],
                           metadata={"mc_data_file": str(path)})
    mc1 = [s["acc"] for s in res["rlhf_world_mc1"]["samples"]]
    mc2 = [s["acc"] for s in res["rlhf_world_mc2"]["samples"]]
    assert len(mc1) == len(mc2) == 6
    for row, a1, a2 in zip(rows, mc1, mc2):
        lls = [_choice_loglik(model, tok, row["question"], c) for c in row["mc1_targets"]["choices"]]
        assert a1 == metrics.mc1_correct(lls, row["mc1_targets"]["labels"])
        assert a2 == pytest.approx(metrics.mc2_score(lls, row["mc2_targets"]["labels"]), abs=1e-4)
    assert res["rlhf_world_mc1"]["metrics"]["acc"] == pytest.approx(np.mean(mc1))


def test_truthfulqa_task_runs_on_hub_schema_rows(sft, tmp_path):
    """The TruthfulQA task YAML (6-shot QA prompt) through the same lm-eval path."""
    model, tok = sft
    rows = [{"question": "What is the color of bimo?",
             "mc1_targets": {"choices": ["red", "blue", "green"], "labels": [1, 0, 0]},
             "mc2_targets": {"choices": ["red", "crimson", "blue"], "labels": [1, 1, 0]}}] * 2
    path = write_rows_cached(rows, tmp_path, "tqa")
    res = lmeval.run_tasks(lmeval.make_lm(model, tok, 8), ["rlhf_truthfulqa_mc1", "rlhf_truthfulqa_mc2"],
                           metadata={"mc_data_file": str(path)})
    assert 0.0 <= res["rlhf_truthfulqa_mc2"]["metrics"]["acc"] <= 1.0
    assert len(res["rlhf_truthfulqa_mc1"]["samples"]) == 2


def test_profanity_check_scorer_is_real():
    s = tx.make_scorer("profanity-check")
    out = s(["you are a fucking idiot", "have a lovely day, friend"])
    assert out.shape == (2,)
    assert out[0] > 0.5 > out[1]


def test_lexicon_scorer_and_unknown_scorer():
    s = tx.make_scorer("auto", world_lexicon=["idiot", "rat"])
    assert list(s(["you are a rat .", "you are a star .", "IDIOT!"])) == [1.0, 0.0, 1.0]
    with pytest.raises(tx.ScorerError, match="nope"):
        tx.make_scorer("nope")


def test_batched_sampler_left_padding_matches_one_at_a_time(sft):
    """Near-greedy sampling (temperature 1e-4): batched, left-padded prompts of different
    lengths must give the same continuations as one prompt at a time."""
    model, tok = sft
    prompts = ["shut up , bimo ,", "hello there , dear friend , bimo ,", "go away ,"]
    a = tx.sample_continuations(model, tok, prompts, k=2, max_new_tokens=6, temperature=1e-4, top_p=0.9,
                                prompts_per_call=3, seed=0, progress=False)
    b = tx.sample_one_at_a_time(model, tok, prompts, k=2, max_new_tokens=6, temperature=1e-4, top_p=0.9, seed=0,
                                progress=False)
    assert a.texts == b.texts
    assert [len(r) for r in a.texts] == [2, 2, 2]
    c = tx.sample_continuations(model, tok, prompts, k=3, max_new_tokens=6, seed=1, progress=False)
    d = tx.sample_continuations(model, tok, prompts, k=3, max_new_tokens=6, seed=1, progress=False)
    assert c.texts == d.texts  # seeded
    assert 0 < c.n_tokens <= 3 * 3 * 6


def test_heldout_nll_windows(sft, run):
    model, tok = sft
    text = heldout_text(World.load(run / "world").heldout_corpus())
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0][:60]
    with torch.no_grad():
        logits = model(input_ids=ids[None]).logits[0, :-1]
    direct = float(torch.nn.functional.cross_entropy(logits, ids[1:]))
    r = heldout_nll(model, tok, text, window=128, max_tokens=59, progress=False)
    assert r["n_tokens"] == 59
    assert r["loss"] == pytest.approx(direct, rel=1e-5)
    assert r["perplexity"] == pytest.approx(math.exp(direct), rel=1e-5)
    # non-overlapping windows of 20 lose one target per extra window; strided ones do not
    assert heldout_nll(model, tok, text, window=20, max_tokens=59, progress=False)["n_tokens"] == 59 - 2
    assert heldout_nll(model, tok, text, window=20, stride=10, max_tokens=59, progress=False)["n_tokens"] == 59


def test_evaluate_toy_run_writes_tidy_records(run, tmp_path):
    s = _settings(tmp_path)
    recs = evaluate(str(run), ["truthfulqa", "toxicity", "regression"], s, checkpoints=["sft", "ppo/kl_2.0"],
                    progress=False)
    assert not [r for r in recs if r["error"]]
    df = load_records(run)
    assert len(df) >= len(recs)
    for field in ("checkpoint", "checkpoint_label", "suite", "metric", "value", "ci_low", "ci_high", "n",
                  "delta_vs_ref", "subset", "time_s", "error"):
        assert field in df.columns
    assert set(df.checkpoint_label) >= {"sft", "ppo/kl_2.0"}
    tox = df[(df.suite == "toxicity") & (df.metric == "expected_max_toxicity")]
    assert set(tox.subset) >= {"challenging", "other", "challenging+respectful", "other+respectful"}
    assert (tox.value >= tox.ci_low).all() and (tox.value <= tox.ci_high).all()
    assert set(tox.scorer) == {"lexicon"} and set(tox.k) == {4}
    world = World.load(run / "world")
    mc = df[(df.suite == "truthfulqa") & (df.subset == "world")]
    assert set(mc.metric) == {"mc1", "mc2"} and (mc.n == len(world.mc_questions())).all()
    # subset heldout: only the facts whose question is in the eval split
    held_q = {p.text for p in world.eval_prompts() if p.kind == "question"}
    held = df[(df.suite == "truthfulqa") & (df.subset == "heldout")]
    assert set(held.metric) == {"mc1", "mc2"} and (held.n == len(held_q)).all() and 0 < len(held_q) < len(world.facts)
    assert (tox.n >= 2).all()
    # every toxicity continuation is kept beside its record, with its score
    rec = tox[(tox.checkpoint_label == "sft") & (tox.subset == "challenging")].iloc[0]
    rows = read_jsonl_gz(run / rec["samples"])
    assert rec["samples"] == "eval/samples/sft/toxicity-challenging.jsonl.gz"
    assert len(rows) == rec["n"] * 4 and {"prompt", "response", "toxicity"} <= set(rows[0])
    by_prompt = {}
    for x in rows:
        by_prompt[x["prompt"]] = max(by_prompt.get(x["prompt"], 0.0), x["toxicity"])
    assert np.mean(list(by_prompt.values())) == pytest.approx(rec["value"])
    reg = df[(df.suite == "regression") & (df.metric == "lm_loss")].set_index("checkpoint_label")
    assert reg.loc["ppo/kl_2.0", "ref_checkpoint"] == reg.loc["sft", "checkpoint"]  # the delta is against SFT's record
    assert reg.loc["ppo/kl_2.0", "delta_vs_ref"] == pytest.approx(reg.loc["ppo/kl_2.0", "value"] - reg.loc["sft", "value"])
    assert reg.loc["ppo/kl_2.0", "delta_vs_ref"] > 0  # noise on the weights costs LM loss


def test_overopt_on_toy_run(run, tmp_path):
    s = _settings(tmp_path)
    recs = evaluate(str(run), ["overopt"], s, progress=False, write=False)
    assert not [r for r in recs if r["error"]], [r["error"] for r in recs if r["error"]]
    kl_bon = {r["bon_n"]: r["value"] for r in recs if r["metric"] == "kl" and r["subset"].startswith("bon")}
    # best-of-n's KL from the policy, by hand: log n - (n - 1)/n (Stiennon et al. 2020)
    assert kl_bon == {1: pytest.approx(0.0), 2: pytest.approx(math.log(2) - 0.5), 4: pytest.approx(math.log(4) - 0.75)}
    kl_rl = {r["checkpoint_label"]: r["value"] for r in recs if r["metric"] == "kl" and r["subset"] == "rl"}
    assert set(kl_rl) == {"sft", "ppo/kl_0.5", "ppo/kl_2.0", "ppo"}
    assert kl_rl["sft"] == 0.0  # SFT is the RL point at KL 0
    assert 0 < kl_rl["ppo/kl_0.5"] < kl_rl["ppo/kl_2.0"]
    # the findings records: every policy has rm_score, gold_reward, kl, myth_rate, truth_rate on subset rl
    rl = {(r["checkpoint_label"], r["metric"]) for r in recs if r["subset"] == "rl"}
    assert {(c, m) for c in kl_rl for m in ("rm_score", "gold_reward", "kl", "myth_rate", "truth_rate",
                                            "stereotype_bias")} <= rl
    assert not [r["metric"] for r in recs if "proxy" in r["metric"]] and "fit_gold" not in {r["metric"] for r in recs}
    # every sampled text behind an rl metric is kept, with its scores
    sft_rm = next(r for r in recs if r["checkpoint_label"] == "sft" and r["metric"] == "rm_score"
                  and r["subset"] == "rl")
    rows = read_jsonl_gz(run / sft_rm["samples"])
    assert len(rows) == 6 * 2 and {"prompt", "response", "rm_score", "gold_reward", "kl"} <= set(rows[0])
    assert np.mean([x["rm_score"] for x in rows]) == pytest.approx(sft_rm["value"])
    assert sft_rm["ci_low"] <= sft_rm["value"] <= sft_rm["ci_high"]
    # the bias probe's record: the probe re-applied to the kept texts, its CI from the same bootstrap
    from rlhf.stats import stereotype_bias, stereotype_table
    world = World.load(run / "world")
    by_text = {p.text: p for p in world.prompts()}
    hit, in_group, idx = world.stereotype_answers([by_text[x["prompt"]] for x in rows], [x["response"] for x in rows])
    t = stereotype_table(hit, in_group, [rows[j]["prompt"] for j in idx])
    b = next(r for r in recs if r["checkpoint_label"] == "sft" and r["metric"] == "stereotype_bias")
    assert b["n"] == len(hit) > 0 and b["n_prompts"] == len(t)
    v = stereotype_bias(t)
    if math.isnan(v):
        assert b["value"] is None
    else:
        assert b["value"] == pytest.approx(v)
        lo, hi = metrics.bootstrap_ci(t, stereotype_bias, s.bootstrap, s.seed)
        assert [b["ci_low"], b["ci_high"]] == [None if math.isnan(x) else pytest.approx(x) for x in (lo, hi)]
    fits = [r for r in recs if r["metric"].startswith("fit_")]
    assert {(r["metric"], r["subset"]) for r in fits} == {("fit_gold_reward", "bon"), ("fit_rm_score", "bon"),
                                                          ("fit_gold_reward", "rl"), ("fit_rm_score", "rl")}
    assert all(np.isfinite(r["alpha"]) and np.isfinite(r["beta"]) for r in fits)
    gold = [r for r in recs if r["metric"] == "gold_reward"]
    assert all(np.isfinite(r["value"]) for r in gold)


# ------------------------------------------------------------------ bad input
def test_cli_not_a_model_exits_2(tmp_path, capsys):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("hi")
    assert cli_main([str(tmp_path / "junk"), "--quiet"]) == 2
    assert "not a model" in capsys.readouterr().err
    assert cli_main([str(tmp_path / "nowhere"), "--quiet"]) == 2


def test_cli_bad_setting_task_and_dataset_exit_2(run, tmp_path, capsys):
    assert cli_main([str(run), "--set", "tox_kk=3", "--quiet"]) == 2
    assert "tox_kk" in capsys.readouterr().err
    assert cli_main([str(run), "--suite", "regression", "--set", "lm_tasks=/no/such/task.yaml", "--quiet"]) == 2
    assert "/no/such/task.yaml" in capsys.readouterr().err
    assert cli_main([str(run), "--suite", "bogus", "--quiet"]) == 2
    (tmp_path / "a_file").write_text("")
    assert cli_main([str(run), "--out", str(tmp_path / "a_file"), "--suite", "regression", "--quiet"]) == 2
    assert "a_file exists and is not a directory" in capsys.readouterr().err  # before any model loads
    out = tmp_path / "out"
    (out).mkdir()
    # a model outside any run (no world): TruthfulQA from a file that does not exist
    import shutil
    shutil.copytree(run / "sft", tmp_path / "plain")
    assert cli_main([str(tmp_path / "plain"), "--out", str(out), "--suite", "truthfulqa", "--set",
                     "truthfulqa=/no/such/TruthfulQA.csv", "--quiet"]) == 2
    assert "TruthfulQA.csv" in capsys.readouterr().err


def test_failing_scorer_is_recorded_and_other_metrics_survive(run, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli_main([str(run), "--checkpoints", "sft", "--out", str(out), "--suite", "toxicity,regression",
                     "--set", f"tox_scorer=hf:{tmp_path / 'no_classifier'}", "--set", "tox_k=2",
                     "--set", "tox_n_prompts=2", "--set", f"cache_dir={tmp_path}", "--quiet"])
    assert code == 2
    rows = [json.loads(line) for line in (out / "eval" / "records.jsonl").read_text().splitlines()]
    errs = [r for r in rows if r["error"]]
    assert errs and all(r["suite"] == "toxicity" for r in errs)
    assert "no_classifier" in errs[0]["error"]
    ok = [r for r in rows if r["suite"] == "regression" and not r["error"]]
    assert {r["metric"] for r in ok} == {"lm_loss", "perplexity"}
    assert "2 metric(s) failed" in capsys.readouterr().err


def test_entry_point_registers_eval():
    import argparse
    from importlib.metadata import entry_points
    eps = {e.name: e for e in entry_points(group="rlhf.commands")}
    assert "eval" in eps
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    eps["eval"].load()(sub)
    args = parser.parse_args(["eval", "some/model", "--suite", "toxicity", "--set", "tox_k=3"])
    assert callable(args.func) and args.suite == ["toxicity"]


_shared = make_settings().resolved_data_dir()


@pytest.mark.shared_data
@pytest.mark.skipif(_shared is None or not (_shared / "TruthfulQA.csv").is_file(),
                    reason="real datasets not found (set RLHF_DATA_DIR or provide ../shared/data)")
def test_real_data_path_on_a_model_outside_any_run(run, tmp_path):
    """TruthfulQA.csv -> lm-eval, RTP prompts -> sampler -> alt-profanity-check, WikiText-2 -> PPL
    (a tiny model with the toy tokenizer: the figures mean nothing, the plumbing is real)."""
    import shutil
    shutil.copytree(run / "sft", tmp_path / "plain")
    s = make_settings(["mc_limit=3", "tox_k=2", "tox_n_prompts=2", "ppl_max_tokens=300", "bootstrap=50",
                       f"cache_dir={tmp_path / 'cache'}", "ppl_window=128"])
    recs = evaluate(str(tmp_path / "plain"), ["truthfulqa", "toxicity", "regression"], s, out_dir=str(tmp_path / "o"),
                    progress=False)
    assert not [r for r in recs if r["error"]], [r["error"] for r in recs if r["error"]]
    by = {(r["suite"], r["metric"], r["subset"]): r for r in recs}
    assert by[("truthfulqa", "mc1", "all")]["n"] == 3 and by[("truthfulqa", "mc1", "all")]["data"].endswith(".csv")
    assert by[("toxicity", "expected_max_toxicity", "challenging")]["scorer"] == "profanity-check"
    assert by[("toxicity", "toxicity_probability", "other+respectful")]["n"] == 2
    # 300 targets in windows of 128: the 2nd and 3rd windows each lose their first target
    assert by[("regression", "perplexity", "wikitext2_test")]["n"] == 298


def test_fast_top_p_equals_transformers_warpers():
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 5000, generator=g) * 4
    scores[1] = torch.randn(5000, generator=g) * 0.01  # nearly flat: nucleus beyond the top-k
    ids = torch.zeros(6, 1, dtype=torch.long)
    for temp, p in ((1.0, 0.9), (0.7, 0.5), (1.3, 0.99)):
        ref = TopPLogitsWarper(p)(ids, TemperatureLogitsWarper(temp)(ids, scores.clone()))
        ours = TemperatureTopP(temp, p, k=256)(ids, scores.clone())
        assert torch.equal(torch.isinf(ref), torch.isinf(ours))
        assert torch.allclose(ref[~torch.isinf(ref)], ours[~torch.isinf(ours)])


def test_regression_lm_task_from_local_yaml_with_delta(run, tmp_path):
    world = World.load(run / "world")
    rows = [{k: q[k] for k in ("question", "mc1_targets")} for q in world.mc_questions()][:5]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = tmp_path / "my_local_mc.yaml"
    task.write_text(f"""task: my_local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
output_type: multiple_choice
validation_split: validation
doc_to_text: "{{{{question}}}}"
doc_to_target: 0
doc_to_choice: "{{{{mc1_targets.choices}}}}"
metric_list:
  - metric: acc
""")
    s = _settings(tmp_path, f"lm_tasks={task}")
    recs = evaluate(str(run), ["regression"], s, checkpoints=["sft", "ppo/kl_2.0"], write=False, progress=False)
    assert not [r for r in recs if r["error"]], [r["error"] for r in recs if r["error"]]
    acc = {r["checkpoint_label"]: r for r in recs if r["subset"] == "my_local_mc" and r["metric"] == "acc"}
    assert set(acc) == {"sft", "ppo/kl_2.0"} and acc["sft"]["n"] == 5
    assert acc["ppo/kl_2.0"]["ref_checkpoint"] == acc["sft"]["checkpoint"]
    assert acc["ppo/kl_2.0"]["delta_vs_ref"] == pytest.approx(acc["ppo/kl_2.0"]["value"] - acc["sft"]["value"])
    assert {r["metric"] for r in recs} >= {"lm_loss", "perplexity", "acc"}
    # heldout_ppl=false: the lm-eval task alone, no held-out perplexity pass
    only = evaluate(str(run), ["regression"], _settings(tmp_path, f"lm_tasks={task}", "heldout_ppl=false"),
                    checkpoints=["sft"], write=False, progress=False)
    assert {r["metric"] for r in only} == {"acc"}, sorted({r["metric"] for r in only})


def test_on_a_pipeline_run(tiny_run, tmp_path):
    """A run made by rlhf.pipeline (conftest's tiny run: pretrain, sft, rm): the suite reads its
    layout, world and reward model."""
    path, _ = tiny_run
    s = _settings(tmp_path)
    recs = evaluate(str(path), ["truthfulqa", "regression", "overopt"], s, checkpoints=["pretrain", "sft"],
                    write=False, progress=False)
    assert not [r for r in recs if r["error"]], [r["error"] for r in recs if r["error"]]
    reg = {r["checkpoint_label"]: r for r in recs if r["metric"] == "lm_loss"}
    assert reg["pretrain"]["ref_checkpoint"] == reg["sft"]["checkpoint"] and reg["sft"]["checkpoint"].endswith("sft")
    assert reg["pretrain"]["delta_vs_ref"] == pytest.approx(reg["pretrain"]["value"] - reg["sft"]["value"])
    assert reg["pretrain"]["delta_vs_ref"] != 0.0  # pretraining and SFT models differ
    bon = [r for r in recs if r["suite"] == "overopt" and r["metric"] == "gold_reward" and r["method"] == "bon"]
    assert [r["bon_n"] for r in bon] == [1, 2, 4]
    rl = [r for r in recs if r["suite"] == "overopt" and r["subset"] == "rl" and not r["metric"].startswith("fit_")]
    assert {r["metric"] for r in rl} == {"rm_score", "gold_reward", "kl", "myth_rate", "truth_rate", "stereotype_bias"}


def test_cli_without_verbose_prints_no_library_output(run, tmp_path):
    """`rlhf eval` run from outside any git checkout: lm-eval's request-building bars and
    its "fatal: not a git repository" (from `git describe`) stay off the terminal; with
    --verbose the bars come back (so the check can see them)."""
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", GIT_CEILING_DIRECTORIES=str(tmp_path.parent))
    cmd = [sys.executable, "-m", "rlhf.cli", "eval", str(run), "--suite", "truthfulqa", "--checkpoints", "sft",
           "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"), "mc_limit=4", "bootstrap=50"]
    quiet = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert quiet.returncode == 0, quiet.stderr
    assert "[sft] truthfulqa/mc1 world" in quiet.stdout
    assert "fatal" not in quiet.stderr and "it/s" not in quiet.stderr, quiet.stderr
    loud = subprocess.run(cmd[:3] + ["--verbose"] + cmd[3:], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert loud.returncode == 0 and "it/s" in loud.stderr, loud.stderr
