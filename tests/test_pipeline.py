"""The stages end to end on tiny configs, through the real CLI."""

import os
import signal
import subprocess
import time

import pytest
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from rlhf.rundir import read_json, read_jsonl

from conftest import REPO, rlhf_cmd, tiny_overrides

QUICK = str(REPO / "experiments" / "quickstart.yaml")


def run_cli(args, **kw):
    env = dict(os.environ, TQDM_DISABLE="1")
    return subprocess.run(rlhf_cmd() + args, capture_output=True, text=True, cwd=REPO, env=env, **kw)


def test_quickstart_through_reward_model(tmp_path):
    r = run_cli(["run", QUICK] + tiny_overrides(tmp_path, extra=["stages=[pretrain,sft,rm]"]))
    assert r.returncode == 0, r.stderr[-3000:]
    # quiet: the libraries' load reports, deprecation and padding warnings are fixed or silenced
    for noise in ("LOAD REPORT", "FutureWarning", "loss_type", "attention_mask", "Writing model shards",
                  "Loading weights", "{'loss'"):
        assert noise not in r.stdout + r.stderr, noise
    assert "[sft]" in r.stdout and "[rm] K=" in r.stdout
    run = tmp_path / "tiny"
    assert read_json(run / "status.json")["state"] == "done"
    meta = read_json(run / "meta.json")
    assert meta["seed"] == 0 and meta["git_commit"] and meta["versions"]["torch"].startswith("2.13.0")
    assert meta["device"] == "cpu" and meta["torch_threads"] == 1  # what it ran on (device: auto says nothing)
    assert "rm:\n  k: 3" in (run / "config.yaml").read_text()
    for stage in ("world", "pretrain", "sft", "rm"):
        assert (run / stage / "DONE").exists() and (run / stage / "summary.json").exists()
        assert not (run / f"{stage}.tmp").exists()
    for stage in ("pretrain", "sft", "rm"):
        assert list((run / stage).glob("*.safetensors")), stage
        assert not list((run / stage).glob("*.bin")) and not list((run / stage).glob("*.pt"))
    assert read_jsonl(run / "pretrain" / "metrics.jsonl") and read_jsonl(run / "rm" / "metrics.jsonl")
    # plain transformers loads every stage
    AutoModelForCausalLM.from_pretrained(run / "sft")
    tok = AutoTokenizer.from_pretrained(run / "rm")
    rm = AutoModelForSequenceClassification.from_pretrained(run / "rm")
    assert rm.config.num_labels == 1 and hasattr(rm.config, "reward_offset")
    rm_sum = read_json(run / "rm" / "summary.json")
    assert rm_sum["k"] == 3 and 0 <= rm_sum["heldout_accuracy"] <= 1 and "heldout_gold_agreement" in rm_sum
    assert len(tok) == read_json(run / "world" / "summary.json")["vocab_size"]
    # stage-end figures are printed
    assert "states the myth" in r.stdout and "demonstrated format" in r.stdout
    # a re-run skips finished stages; --force redoes them
    r2 = run_cli(["run", QUICK] + tiny_overrides(tmp_path, extra=["stages=[pretrain,sft,rm]"]))
    assert r2.returncode == 0 and r2.stdout.count("done already") == 3


def test_reward_bias_centres_demonstrations(tiny_run):
    import torch
    from rlhf.models import load_reward_model, sequence_scores
    from rlhf.world import World
    path, cfg = tiny_run
    tok = AutoTokenizer.from_pretrained(path / "rm")
    rm = load_reward_model(str(path / "rm"))
    demos = World(cfg.world).demonstrations()
    enc = tok([p.text + " " + r for p, r in demos], return_tensors="pt", padding=True)
    with torch.no_grad():
        s = sequence_scores(rm, enc["input_ids"], enc["attention_mask"])
    assert abs(s.mean().item()) < 1e-4


def test_different_config_in_same_run_dir_is_refused(tmp_path):
    r = run_cli(["run", QUICK] + tiny_overrides(tmp_path, extra=["stages=[pretrain]", "pretrain.steps=5"]))
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli(["run", QUICK] + tiny_overrides(tmp_path, extra=["stages=[pretrain]", "pretrain.steps=6"]))
    assert r.returncode == 2 and "different config" in r.stderr
    assert "pretrain.steps: 5 -> 6" in r.stderr  # names what changed


def test_missing_sft_data_fails_cleanly(tmp_path):
    r = run_cli(["run", QUICK] + tiny_overrides(tmp_path, extra=["stages=[pretrain,sft]", "sft.data=/nonexistent.jsonl"]))
    assert r.returncode == 2
    assert "sft.data" in r.stderr and "/nonexistent.jsonl" in r.stderr
    run = tmp_path / "tiny"
    # the data file is checked before the run directory is touched
    assert not (run / "status.json").exists() and not (run / "pretrain").exists()


def test_empty_sft_data(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    r = run_cli(["run", QUICK] + tiny_overrides(tmp_path, extra=["stages=[pretrain,sft]", f"sft.data={empty}"]))
    assert r.returncode == 2 and "no demonstrations" in r.stderr


def test_k_larger_than_distinct_samples(tmp_path):
    r = run_cli(["run", QUICK] + tiny_overrides(tmp_path, extra=["rm.k=9", "rm.sample_temperature=0.01",
                                                                 "stages=[pretrain,sft,rm]"]))
    assert r.returncode == 2
    assert "rm.k=9 is larger than the number of distinct samples" in r.stderr
    assert not (tmp_path / "tiny" / "rm").exists()


def test_prompt_longer_than_context(tmp_path):
    r = run_cli(["run", QUICK] + tiny_overrides(tmp_path, extra=["model.n_positions=10", "pretrain.seq_len=8",
                                                                 "stages=[pretrain,sft]"]))
    assert r.returncode == 2
    assert "exceeds the model's context of 10" in r.stderr
    assert not (tmp_path / "tiny" / "sft").exists()


def test_ctrl_c_leaves_nothing_that_looks_complete(tmp_path):
    env = dict(os.environ, TQDM_DISABLE="1")
    # SIGINT as at a terminal: a shell's background job (how CI may start pytest) inherits SIGINT
    # ignored, and Python then keeps it ignored, so restore the default in the child
    p = subprocess.Popen(rlhf_cmd() + ["run", QUICK] + tiny_overrides(tmp_path, extra=["pretrain.steps=100000"]),
                         cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    run = tmp_path / "tiny"
    deadline = time.time() + 240  # generous: a loaded 2-core machine takes long to import torch
    while time.time() < deadline and not (run / "pretrain.tmp" / "metrics.jsonl").exists():
        time.sleep(0.2)
    assert (run / "pretrain.tmp" / "metrics.jsonl").exists(), "pretraining never started"
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]
    assert "interrupted" in err
    st = read_json(run / "status.json")
    assert st["state"] == "interrupted" and st["stage"] == "pretrain"
    assert not (run / "pretrain").exists() and not (run / "pretrain.tmp").exists()


@pytest.mark.slow
def test_pretrained_lm_imitates_myths_and_sft_teaches_format(tmp_path):
    """A small model (2 layers, width 96) is enough to show both effects in ~20 s."""
    from rlhf.config import load_config
    from rlhf.pipeline import run_pipeline
    cfg = load_config(QUICK, [f"out_dir={tmp_path}", "stages=[pretrain,sft]", "model.n_embd=96",
                              "pretrain.steps=600", "world.corpus_docs=2000", "world.n_entities=15",
                              "sft.epochs=8"])
    run = run_pipeline(cfg)
    pre, sft = read_json(run / "pretrain" / "summary.json"), read_json(run / "sft" / "summary.json")
    assert pre["myth_facts_states_myth"] > pre["myth_facts_states_truth"] + 0.2
    assert pre["answers_ended"] < 0.1
    assert sft["answers_in_demo_format"] > 0.8 and sft["answers_ended"] > 0.9


def test_verbose_brings_the_library_output_back(monkeypatch):
    import transformers
    from rlhf.cli import library_output
    tlog = transformers.utils.logging
    for key in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(key, os.environ.get(key, ""))  # restored after the test
    try:
        library_output(verbose=False)
        assert tlog.get_verbosity() == tlog.ERROR and not tlog.is_progress_bar_enabled()
        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
        library_output(verbose=True)
        assert tlog.get_verbosity() == tlog.WARNING and tlog.is_progress_bar_enabled()
        assert os.environ["TRANSFORMERS_VERBOSITY"] == "warning"
    finally:
        tlog.set_verbosity_warning()


def test_raising_ppo_steps_continues_from_the_newest_checkpoint(tiny_run, tmp_path, capsys):
    """ppo.steps 6 -> 8 without --force continues the finished PPO stage from its newest
    checkpoint (step 4: iterations 4 and 5 are redone, deterministically) to the same result
    as a run made with 8 steps from the start."""
    import shutil

    from rlhf.config import load_config
    from rlhf.pipeline import run_pipeline
    src, _ = tiny_run
    for name in ("a", "b"):
        shutil.copytree(src, tmp_path / name)

    def cfg(name, steps):
        return load_config(QUICK, tiny_overrides(tmp_path, name, [f"ppo.steps={steps}", "stages=[ppo]"]))

    run_pipeline(cfg("a", 6))
    assert [p.name for p in (tmp_path / "a" / "ppo" / "checkpoints").iterdir()] == ["step_000004"]
    kept = (tmp_path / "a" / "ppo" / "metrics.jsonl").read_text()
    capsys.readouterr()
    run_pipeline(cfg("a", 8))  # no --force
    out = capsys.readouterr().out
    assert "ppo.steps: 6 -> 8" in out and "continuing the finished stage from step_000004" in out
    assert "resumed from step_000004 (step 4)" in out
    run_pipeline(cfg("b", 8))
    drop = ("time_s",)
    a = [{k: v for k, v in r.items() if k not in drop} for r in read_jsonl(tmp_path / "a" / "ppo" / "metrics.jsonl")]
    b = [{k: v for k, v in r.items() if k not in drop} for r in read_jsonl(tmp_path / "b" / "ppo" / "metrics.jsonl")]
    assert [r["step"] for r in a] == list(range(8))
    assert a == b
    assert read_json(tmp_path / "a" / "ppo" / "summary.json")["steps"] == 8
    assert kept  # the 6-step result stayed whole until the 8-step one replaced it
    # lowering ppo.steps is still a different config
    from rlhf.config import ConfigError
    with pytest.raises(ConfigError, match="ppo.steps: 8 -> 7"):
        run_pipeline(cfg("a", 7))


def test_wall_time_is_reported_across_invocations(tmp_path, capsys):
    from rlhf.config import load_config
    from rlhf.pipeline import run_pipeline

    def run(stages, force=False):
        cfg = load_config(QUICK, tiny_overrides(tmp_path, extra=[f"stages=[{stages}]", "pretrain.steps=20"]))
        run_pipeline(cfg, force=force)
        return capsys.readouterr().out

    out1 = run("pretrain")
    first = read_json(tmp_path / "tiny" / "wall.json")["total_s"]
    assert "over" not in out1.split("[run]")[-1]
    out2 = run("pretrain,sft")
    wall = read_json(tmp_path / "tiny" / "wall.json")
    st = read_json(tmp_path / "tiny" / "status.json")
    assert len(wall["invocations"]) == 2 and "over 2 invocations" in out2
    assert st["wall_s"] == pytest.approx(wall["total_s"], abs=0.1) and st["invocations"] == 2
    assert wall["total_s"] > first and st["wall_s_this_invocation"] < st["wall_s"]
    run("pretrain,sft", force=True)  # --force redoing every stage: a new run, a new count
    assert len(read_json(tmp_path / "tiny" / "wall.json")["invocations"]) == 1


def test_rm_offset_and_evaluation_show_progress(tiny_run, monkeypatch):
    """The reward model's score offset and its evaluations (minutes on a real model) each
    show a named progress bar over their batches."""
    from rlhf import reward
    from rlhf.models import load_reward_model
    path, _ = tiny_run
    bars = []

    def fake_tqdm(it, desc=None, **kw):
        bars.append([desc, 0])
        for x in it:
            bars[-1][1] += 1
            yield x

    monkeypatch.setattr(reward, "tqdm", fake_tqdm)
    rm = load_reward_model(str(path / "rm")).eval()
    tok = AutoTokenizer.from_pretrained(path / "rm")
    reward.score_texts(rm, tok, ["a"] * 5, ["b"] * 5, 32, batch_size=2, progress="rm offset")
    rows = [{"prompt": "a", "responses": ["b", "c"]}] * 3
    reward.evaluate_rm(rm, tok, rows, "cpu", 32, batch=2, progress="rm held-out eval")
    reward.score_texts(rm, tok, ["a"], ["b"], 32)  # no name: no bar (PPO's scoring, every iteration)
    assert bars == [["rm offset", 3], ["rm held-out eval", 2]]
