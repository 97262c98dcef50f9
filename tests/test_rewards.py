"""A reward from outside the run (rlhf/rewards.py): the spec parser, the label choice, Python
reward functions, a Hugging Face classifier with its own tokenizer in PPO and in the eval's
gold path, and the classifier stage (rlhf/classifier.py)."""

import gzip
import json
import shutil

import pytest
import torch

from rlhf.config import ConfigError, load_config
from rlhf.pipeline import run_pipeline
from rlhf.rewards import (HFClassifierReward, LabelChoice, PyReward, RewardSpec, check_reward_spec, load_reward,
                          parse_label_choice, parse_reward_spec)
from rlhf.rundir import read_json, read_jsonl

from conftest import REPO, rlhf_cmd, tiny_overrides

WORDS = ["friend", "kind", "idiot", "fool", "you", "are", "a", "the", "movie", "was", "good", "bad", "great",
         "awful", "film", "and", "very", "is", "."]


def make_bert_classifier(path, labels=("NEG", "POS")):
    """A tiny BERT sequence classifier with its own word-level tokenizer (another vocabulary
    and another architecture than the toy world's GPT-2 policy), head set by hand: the
    POS logit minus the NEG logit grows with the share of kind words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + sorted(set(WORDS)))}
    t = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                  sep_token="[SEP]")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, num_labels=len(labels),
                     id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
                     pad_token_id=0)
    model = BertForSequenceClassification(cfg)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


# ----------------------------------------------------------------------------- the spec

def test_spec_parser_good_and_bad():
    assert parse_reward_spec("rm") == RewardSpec("rm") and not parse_reward_spec("rm").outside
    assert parse_reward_spec("classifier") == RewardSpec("classifier") and parse_reward_spec("classifier").outside
    assert parse_reward_spec("rm:/some/rm") == RewardSpec("rm", "/some/rm") and parse_reward_spec("rm:/x").outside
    assert parse_reward_spec("hf:org/sentiment-model") == RewardSpec("hf", "org/sentiment-model")
    assert parse_reward_spec(" py:my.pkg:score ") == RewardSpec("py", "my.pkg:score")
    assert str(parse_reward_spec("py:my.pkg:score")) == "py:my.pkg:score"
    for bad in ("", "reward", "hf:", "rm: ", "py:mod", "py::f", "py:mod:", "py:mod:1f", "py:a-b:f", "xx:y"):
        with pytest.raises(ConfigError, match="ppo.reward"):
            parse_reward_spec(bad)
    # the eval's gold_rm took a bare reward-model path before specs existed
    assert parse_reward_spec("runs/x/rm", "gold_rm", bare_path_is_rm=True) == RewardSpec("rm", "runs/x/rm")
    with pytest.raises(ConfigError, match="gold_rm"):
        parse_reward_spec("py:nomodule", "gold_rm", bare_path_is_rm=True)


def test_config_refuses_bad_specs_and_unclear_combinations_with_exit_2(tmp_path):
    import subprocess
    q = REPO / "experiments" / "quickstart.yaml"
    with pytest.raises(ConfigError, match="ppo.reward"):
        load_config(q, ["ppo.reward=hf:"])
    with pytest.raises(ConfigError, match="ppo.reward_label.*only applies to a classifier"):
        load_config(q, ["ppo.reward_label=POSITIVE"])  # ignored with the run's RM: refused
    with pytest.raises(ConfigError, match="ppo.reward_input"):
        load_config(q, ["ppo.reward=py:reward_fns:kind_words", "ppo.reward_input=prompt+response"])
    with pytest.raises(ConfigError, match="ppo.rounds=2 retrains the run's reward model"):
        load_config(q, ["ppo.reward=hf:x/y", "ppo.rounds=2"])
    with pytest.raises(ConfigError, match="ppo.reward_input"):
        load_config(q, ["ppo.reward=hf:x/y", "ppo.reward_input=prompt"])
    ok = load_config(q, ["ppo.reward=hf:x/y", "ppo.reward_label=prob:POSITIVE", "ppo.reward_input=prompt+response"])
    assert ok.ppo.reward == "hf:x/y"
    r = subprocess.run(rlhf_cmd() + ["run", str(q), "ppo.reward=py:reward_fns", f"out_dir={tmp_path}"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "py:<module>:<function>" in r.stderr, r.stderr[-800:]
    # a py: function that does not import: exit 2 before any compute, nothing written
    r = subprocess.run(rlhf_cmd() + ["run", str(q), "ppo.reward=py:no_such_module_xyz:f", f"out_dir={tmp_path}"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no module named 'no_such_module_xyz'" in r.stderr, r.stderr[-800:]
    assert not (tmp_path / "quickstart").exists()


def test_label_choice_by_hand():
    z = torch.tensor([[1.0, 3.0], [2.0, 0.0]])
    labels = {0: "NEGATIVE", 1: "POSITIVE"}
    assert parse_label_choice("POSITIVE", labels).apply(z).tolist() == [3.0, 0.0]
    assert parse_label_choice("logit:0", labels).apply(z).tolist() == [1.0, 2.0]
    p = parse_label_choice("prob:positive", labels).apply(z)
    e = 2.718281828459045
    assert torch.allclose(p, torch.tensor([e**3 / (e + e**3), 1 / (e**2 + 1)]))
    assert parse_label_choice("diff:POSITIVE,NEGATIVE", labels).apply(z).tolist() == [2.0, -2.0]
    assert parse_label_choice("", {0: "LABEL_0"}) == LabelChoice("logit", 0)  # one output: its logit
    for bad, msg in (("", "has 2 labels"), ("NEUTRAL", "no label 'NEUTRAL'"), ("2", "out of range"),
                     ("diff:1", "two labels"), ("max:1", "expected")):
        with pytest.raises(ConfigError, match=msg):
            parse_label_choice(bad, labels)


def test_python_reward_function_is_checked():
    f = load_reward(parse_reward_spec("py:reward_fns:kind_words"))
    assert isinstance(f, PyReward)
    assert f(["p", "q"], ["you are a kind friend", "you idiot"]).tolist() == [2.0, -1.0]
    for name, msg in (("too_few", "returned 1 values for 2 responses"), ("not_numbers", "value 0 is 'good'"),
                      ("with_nan", "value 0 is nan"), ("a_number", "returned float")):
        g = load_reward(parse_reward_spec(f"py:reward_fns:{name}"))
        with pytest.raises(ConfigError, match=msg):
            g(["p", "q"], ["a", "b"])
    for spec, msg in (("py:no_such_module_xyz:f", "no module named 'no_such_module_xyz'"),
                      ("py:reward_fns:missing", "has no 'missing'"),
                      ("py:reward_fns:NOT_CALLABLE", "is a int, not a function")):
        with pytest.raises(ConfigError, match=msg):
            check_reward_spec(parse_reward_spec(spec))


def test_hf_classifier_reads_text_with_its_own_tokenizer(tmp_path):
    from rlhf.rewards import classifier_logits
    path = make_bert_classifier(tmp_path / "clf")
    f = load_reward(parse_reward_spec(f"hf:{path}"), label="diff:POS,NEG", input="prompt+response")
    assert isinstance(f, HFClassifierReward)
    got = f(["the movie was", "the film is"], ["good", "awful and bad"])
    z = classifier_logits(f.model, f.tokenizer, ["the movie was good", "the film is awful and bad"], 64)
    assert torch.allclose(got, z[:, 1] - z[:, 0])
    # batched with padding = one at a time (right padding, the model's own forward)
    one = torch.cat([f(["the movie was"], ["good"]), f(["the film is"], ["awful and bad"])])
    assert torch.allclose(got, one, atol=1e-5)
    with pytest.raises(ConfigError, match="ppo.reward_label: the classifier has 2 labels"):
        load_reward(parse_reward_spec(f"hf:{path}"))


# ----------------------------------------------------------------------------- PPO

def _copy_run(tiny_run, tmp_path, name):
    src, _ = tiny_run
    dst = tmp_path / name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def _samples(run):
    with gzip.open(run / "ppo" / "samples.jsonl.gz", "rt") as f:
        return [json.loads(line) for line in f]


def test_ppo_with_a_python_reward_needs_no_reward_model(tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path, "py")
    shutil.rmtree(run / "rm")  # an outside reward: no rm stage needed, the critic starts from the SFT policy
    cfg = load_config(REPO / "experiments" / "quickstart.yaml", tiny_overrides(tmp_path, "py", [
        "stages=[ppo]", "ppo.reward=py:reward_fns:kind_words", "ppo.steps=2", "ppo.checkpoint_every=1"]))
    run_pipeline(cfg, force=True)
    from reward_fns import kind_words
    rows = _samples(run)
    assert len(rows) == 16
    for r in rows:  # the reward reads the response without the EOS text
        body = r["response"].removesuffix(" <end>")
        assert r["rm_score"] == kind_words([r["prompt"]], [body])[0]
    assert (run / "ppo" / "critic" / "config.json").exists()


def test_ppo_with_an_hf_classifier_of_another_tokenizer(tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path, "hf")
    clf = make_bert_classifier(tmp_path / "clf")
    for critic in ("head", "separate"):
        cfg = load_config(REPO / "experiments" / "quickstart.yaml", tiny_overrides(tmp_path, "hf", [
            "stages=[ppo]", f"ppo.reward=hf:{clf}", "ppo.reward_label=POS", "ppo.steps=2", f"ppo.critic={critic}"]))
        run_pipeline(cfg, force=True)  # not refused: the classifier re-tokenises the text itself
        f = load_reward(parse_reward_spec(f"hf:{clf}"), label="POS")
        rows = _samples(run)
        assert len(rows) == 16 and len(read_jsonl(run / "ppo" / "metrics.jsonl")) == 2
        got = torch.tensor([r["rm_score"] for r in rows])
        want = f([r["prompt"] for r in rows], [r["response"].removesuffix(" <end>") for r in rows])
        assert torch.allclose(got, want, atol=1e-5)


# ----------------------------------------------------------------------------- the classifier stage

def test_accuracy_and_split_by_hand():
    from rlhf.classifier import accuracy, split_labelled
    z = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.5, 0.4]])
    assert accuracy(z, torch.tensor([0, 1, 1, 1])) == 0.5
    assert accuracy(z[:3], torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)
    rows = [{"text": f"t{i}", "label": i % 2, "heldout": i >= 8} for i in range(10)]
    train, held = split_labelled(rows, 0, 5, seed=0)
    assert sorted(r["text"] for r in held) == ["t8", "t9"] and len(train) == 8
    train, held = split_labelled([dict(r, heldout=False) for r in rows], 4, 2, seed=0)
    assert len(held) == 2 and len(train) == 4 and not {r["text"] for r in held} & {r["text"] for r in train}


def _labelled_file(tmp_path, n=120):
    import random
    rng = random.Random(0)
    rows = []
    for i in range(n):
        label = i % 2
        words = [rng.choice(["the", "movie", "film", "was", "very", "."]) for _ in range(5)]
        words.insert(rng.randrange(5), rng.choice(["friend", "kind", "good"] if label else ["idiot", "fool", "bad"]))
        rows.append({"text": " ".join(words), "label": label, "split": "test" if i >= n - 40 else "train",
                     "rating": 9 if label else 2})
    p = tmp_path / "labelled.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_classifier_stage_then_ppo_against_it(tmp_path):
    """A scratch world policy, a classifier trained from the pretrain stage on labelled
    texts (held out: the split=test rows), then PPO on its POSITIVE logit."""
    from rlhf.classifier import accuracy
    data = _labelled_file(tmp_path)
    cfg = load_config(REPO / "experiments" / "quickstart.yaml", tiny_overrides(tmp_path, "clf", [
        "stages=[pretrain,sft,classifier,ppo]", f"classifier.data={data}", "classifier.labels=[NEGATIVE,POSITIVE]",
        "classifier.lr=3e-3", "classifier.epochs=6", "classifier.max_length=16", "ppo.reward=classifier",
        "ppo.reward_label=POSITIVE", "ppo.critic=head", "ppo.steps=2"]))
    run = run_pipeline(cfg)
    s = read_json(run / "classifier" / "summary.json")
    assert s["n_heldout"] == 40 and s["n_train"] == 80
    with gzip.open(run / "classifier" / "heldout_predictions.jsonl.gz", "rt") as f:
        preds = [json.loads(line) for line in f]
    z = torch.tensor([p["logits"] for p in preds])
    y = torch.tensor([p["label"] for p in preds])
    assert s["heldout_accuracy"] == accuracy(z, y) == sum(p["pred"] == p["label"] for p in preds) / 40
    assert s["heldout_accuracy"] > 0.75  # one informative word per text: learnt
    assert json.loads((run / "classifier" / "config.json").read_text())["id2label"] == {"0": "NEGATIVE",
                                                                                      "1": "POSITIVE"}
    assert not (run / "rm").exists() and len(read_jsonl(run / "ppo" / "metrics.jsonl")) == 2
    f = load_reward(parse_reward_spec("classifier"), run, label="POSITIVE")
    rows = _samples(run)
    want = f([r["prompt"] for r in rows], [r["response"].removesuffix(" <end>") for r in rows])
    assert torch.allclose(torch.tensor([r["rm_score"] for r in rows]), want, atol=1e-5)


def test_classifier_from_scratch_on_the_runs_tokenizer(tmp_path):
    data = _labelled_file(tmp_path)
    cfg = load_config(REPO / "experiments" / "quickstart.yaml", tiny_overrides(tmp_path, "scratchclf", [
        "stages=[classifier]", f"classifier.data={data}", "classifier.init=scratch", "classifier.lr=3e-3",
        "classifier.epochs=4", "classifier.max_length=16"]))
    run = run_pipeline(cfg)
    s = read_json(run / "classifier" / "summary.json")
    c = json.loads((run / "classifier" / "config.json").read_text())
    assert s["init"] == "scratch" and c["n_layer"] == 1 and c["n_embd"] == 32 and c["model_type"] == "gpt2"
    assert s["heldout_accuracy"] > 0.75
    # the first N layers of the init model (here the 2-layer pretrain stage)
    over = ["model.n_layer=2", f"classifier.data={data}", "classifier.max_length=16"]
    run = run_pipeline(load_config(REPO / "experiments" / "quickstart.yaml", tiny_overrides(tmp_path, "layers", over + [
        "stages=[pretrain,classifier]", "classifier.n_layers=1"])))
    assert json.loads((run / "classifier" / "config.json").read_text())["n_layer"] == 1
    with pytest.raises(Exception, match="classifier.n_layers=3: .* has only 2 layers"):
        run_pipeline(load_config(REPO / "experiments" / "quickstart.yaml", tiny_overrides(tmp_path, "layers", over + [
            "stages=[classifier]", "classifier.n_layers=3"])), force=True)
    with pytest.raises(Exception, match="classifier.max_length=100 exceeds"):
        run_pipeline(load_config(REPO / "experiments" / "quickstart.yaml", tiny_overrides(tmp_path, "scratch2", [
            "stages=[classifier]", f"classifier.data={data}", "classifier.init=scratch", "classifier.max_length=100"])))


def test_ppo_reward_classifier_without_the_stage_is_refused(tmp_path):
    cfg = load_config(REPO / "experiments" / "quickstart.yaml", tiny_overrides(tmp_path, "noclf", [
        "stages=[pretrain,sft,ppo]", "ppo.reward=classifier", "ppo.reward_label=1"]))
    with pytest.raises(ConfigError, match="add 'classifier' to stages"):
        run_pipeline(cfg)
    with pytest.raises(Exception, match="classifier.data"):
        run_pipeline(load_config(REPO / "experiments" / "quickstart.yaml", tiny_overrides(tmp_path, "noclf", [
            "stages=[pretrain,sft,classifier]"])))


# ----------------------------------------------------------------------------- the eval's gold path

def test_eval_gold_path_takes_the_same_specs(tmp_path):
    """overopt on a real-model run: gold_rm=py:... and gold_rm=hf:... are the objects PPO
    uses (rlhf.rewards.load_reward), scored on the eval's samples."""
    from rlhf_eval.settings import make_settings
    from rlhf_eval.suite import evaluate
    from test_pretrained_source import make_hf_run
    run = make_hf_run(tmp_path)
    clf = make_bert_classifier(tmp_path / "clf")
    common = ["overopt_n_prompts=3", "overopt_samples=2", "bon_max_n=2", "overopt_max_new_tokens=4"]
    recs = evaluate(str(run), ["overopt"], make_settings(common + ["gold_rm=py:reward_fns:kind_words"]),
                    progress=False, checkpoints=["sft", "ppo"])
    assert not [r for r in recs if r.get("error")], [r["error"] for r in recs if r.get("error")]
    from reward_fns import kind_words
    rl = [r for r in recs if r["metric"] == "gold_reward" and r.get("method") == "rl"]
    assert rl
    for rec in rl:
        with gzip.open(run / rec["samples"], "rt") as f:
            rows = [json.loads(line) for line in f]
        bodies = [r["response"].removesuffix(" <end>") for r in rows]
        assert [r["gold_reward"] for r in rows] == kind_words([r["prompt"] for r in rows], bodies)
    recs = evaluate(str(run), ["overopt"], make_settings(common + [f"gold_rm=hf:{clf}", "gold_label=prob:POS"]),
                    progress=False, checkpoints=["sft", "ppo"], write=False)
    assert not [r for r in recs if r.get("error")], [r["error"] for r in recs if r.get("error")]
    golds = [r["value"] for r in recs if r["metric"] == "gold_reward" and r.get("method") == "rl"]
    assert golds and all(0 < g < 1 for g in golds)  # a probability
    with pytest.raises(Exception, match="gold_rm"):
        evaluate(str(run), ["overopt"], make_settings(common + ["gold_rm=py:no_such_module_xyz:f"]), progress=False)


# ----------------------------------------------------------------------------- the IMDB task

def test_imdb_config_loads_and_reads_the_real_data_when_present():
    from pathlib import Path
    from rlhf.data import check_data_inputs, load_labelled_texts, load_prompts
    cfg = load_config(REPO / "experiments" / "imdb_sentiment.yaml", ["classifier.data=x.jsonl", "ppo.data=x.jsonl"])
    assert cfg.ppo.reward == "classifier" and "rm" not in cfg.stages
    data = REPO.parent / "shared" / "data" / "imdb.jsonl.gz"
    if not Path(data).exists():
        pytest.skip(f"{data} is absent (the IMDB reviews: fields split, label, rating, text)")
    cfg = load_config(REPO / "experiments" / "imdb_sentiment.yaml", [f"classifier.data={data}", f"ppo.data={data}"])
    check_data_inputs(cfg)
    rows = load_labelled_texts(str(data), 2)
    assert len(rows) > 40000 and {r["label"] for r in rows} == {0, 1} and any(r["heldout"] for r in rows)
    prompts = load_prompts(str(data), split="train", words=8)
    assert len(prompts) > 20000 and max(len(p.split()) for p in prompts) == 8


def test_ppo_with_an_outside_reward_stops_and_resumes_bit_exactly(tiny_run, tmp_path, monkeypatch, capsys):
    """A Python reward, no reward model, a separate critic started from the SFT policy with a
    zeroed head: a run stopped after a checkpoint and resumed (from the checkpoint, not from
    step 0) gives the uninterrupted run's metrics, samples and saved policy and critic (the
    resume must not zero the trained head again, nor look for an RM). With TensorBoard on,
    the resume keeps logging into the same curves, and a --force redo sets them aside."""
    import importlib.util
    import rlhf.ppo as ppo_mod
    from rlhf import stop
    from safetensors.torch import load_file
    tb = importlib.util.find_spec("tensorboard") is not None
    extra = ["stages=[ppo]", "ppo.reward=py:reward_fns:kind_words", "ppo.critic=separate", "ppo.steps=5",
             "ppo.checkpoint_every=2", "ppo.lr=1e-3", *(["logging.report_to=tensorboard"] if tb else [])]
    runs = {}
    for name in ("a", "b"):
        runs[name] = _copy_run(tiny_run, tmp_path, name)
        shutil.rmtree(runs[name] / "rm")
    cfg = {n: load_config(REPO / "experiments" / "quickstart.yaml", tiny_overrides(tmp_path, n, extra)) for n in runs}
    run_pipeline(cfg["a"], force=True)

    orig_step = ppo_mod.PPORun.step

    def step(self, i):
        orig_step(self, i)
        if i == 2:
            stop.request_stop("test")  # honoured at the end of the next iteration: a checkpoint, then stop
    monkeypatch.setattr(ppo_mod.PPORun, "step", step)
    with pytest.raises(stop.StopRequested):
        run_pipeline(cfg["b"], force=True)
    assert not (runs["b"] / "ppo" / "DONE").exists()
    cks = sorted((runs["b"] / "ppo.tmp" / "checkpoints").iterdir())
    assert [c.name for c in cks] == ["step_000002", "step_000004"]
    shutil.rmtree(cks[-1])  # as if killed before that checkpoint: steps 2 and 3 were logged, and are again
    monkeypatch.setattr(ppo_mod.PPORun, "step", orig_step)
    capsys.readouterr()
    run_pipeline(cfg["b"])
    out = capsys.readouterr().out
    assert "[ppo] resumed from step_000002" in out and "damaged" not in out, out[-2000:]

    strip = lambda rows: [{k: v for k, v in r.items() if k != "time_s"} for r in rows]  # noqa: E731
    ra, rb = (read_jsonl(runs[n] / "ppo" / "metrics.jsonl") for n in "ab")
    assert len(ra) == 5 and strip(ra) == strip(rb)
    assert _samples(runs["a"]) == _samples(runs["b"])
    for f in ("model.safetensors", "critic/model.safetensors"):
        wa, wb = (load_file(runs[n] / "ppo" / f) for n in "ab")
        assert set(wa) == set(wb) and all(torch.equal(wa[k], wb[k]) for k in wa), f
    head = load_file(runs["a"] / "ppo" / "critic" / "model.safetensors")["score.weight"]
    assert head.abs().sum() > 0  # the critic's zeroed head trained
    if tb:
        board = runs["b"] / "tracking" / "tensorboard"
        assert (board / "ppo").is_dir() and not list(board.glob("ppo.before-*"))  # the resume appended
        from rlhf.tracking import scalars
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        acc = EventAccumulator(str(board / "ppo"), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:  # each step once (the earlier attempt's 2 and 3 purged), as metrics.jsonl
            got = [(e.step, e.value) for e in acc.Scalars(tag)]
            want = [(r["step"], v) for r in rb for k, v in scalars(r).items() if k == tag]
            assert [s_ for s_, _ in got] == [s_ for s_, _ in want], tag
            assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6, abs=1e-7), tag
        run_pipeline(cfg["b"], force=True)
        assert len(list(board.glob("ppo.before-*"))) == 1  # a redo from step 0 set the old curves aside
