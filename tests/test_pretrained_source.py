"""The non-toy path: a pretrained Hugging Face model folder as the SFT policy, pairwise
(HH-RLHF style) comparisons for the reward model, PPO prompts and ptx text from files."""

import json

from rlhf.config import ModelConfig, WorldConfig, load_config
from rlhf.models import save_hf, scratch_model
from rlhf.pipeline import run_pipeline
from rlhf.rundir import read_json, read_jsonl
from rlhf.tokenizer import train_world_tokenizer
from rlhf.world import World

from conftest import REPO


def make_hf_run(tmp_path):
    world = World(WorldConfig(n_entities=12, corpus_docs=200))
    tok = train_world_tokenizer(world)
    model_dir = tmp_path / "base"
    save_hf(scratch_model(ModelConfig(n_layer=1, n_embd=32, n_head=2), len(tok), tok.pad_token_id, tok.eos_token_id),
            tok, model_dir)
    pairs = tmp_path / "pairs.jsonl"
    rows = []
    for p in world.prompts()[:40]:
        d = f"\n\nHuman: {p.text}\n\nAssistant:"
        rows.append({"chosen": d + " you are a friend . <end>", "rejected": d + " you are a idiot ."})
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(world.corpus()))
    cfg = load_config(REPO / "experiments" / "smollm2_hh.yaml", [
        f"out_dir={tmp_path}", "name=hf", f"model.source={model_dir}", f"rm.data={pairs}", f"ppo.data={pairs}",
        f"ppo.ptx_data={text}", "ppo.ptx_coef=0.5", "ppo.steps=3", "ppo.batch_size=4", "ppo.minibatch_size=2",
        "ppo.max_new_tokens=6", "ppo.checkpoint_every=2", "threads=1", "ppo.lr=1e-4"])
    return run_pipeline(cfg)


def test_hf_folder_with_pair_data(tmp_path):
    run = make_hf_run(tmp_path)
    assert read_json(run / "pretrain" / "summary.json")["skipped"] is True
    assert read_json(run / "sft" / "summary.json")["skipped"] is True
    # sft.skip: sft/ points to the source model instead of copying it; later stages load from it
    assert read_json(run / "sft" / "model_source.json") == {"path": str((tmp_path / "base").resolve())}
    assert (run / "sft" / "DONE").exists() and not list((run / "sft").glob("*.safetensors"))
    rm = read_json(run / "rm" / "summary.json")
    assert rm["k"] == 2 and rm["n_comparisons"] == 40 and "heldout_accuracy" in rm
    ppo = read_jsonl(run / "ppo" / "metrics.jsonl")
    assert len(ppo) == 3 and all(r["ptx_loss"] > 0 for r in ppo) and "gold_reward" not in ppo[0]
    assert "heldout_lm_loss" in ppo[0]
    assert not (run / "world").exists()


def test_overoptimisation_with_a_gold_reward_model(tmp_path):
    """Real models: the gold reward comes from a reward model (here a second RM trained on
    more comparisons than the run's reward model), the prompts from the run's ppo.data."""
    from rlhf_eval.settings import make_settings
    from rlhf_eval.suite import evaluate
    run = make_hf_run(tmp_path)
    gold_cfg = load_config(run / "config.yaml", ["name=gold", "stages=[sft,rm]", "rm.epochs=2"])
    gold_run = run_pipeline(gold_cfg)
    settings = make_settings([f"gold_rm={gold_run / 'rm'}", "overopt_n_prompts=4", "overopt_samples=2",
                              "bon_max_n=4", "overopt_max_new_tokens=4"])
    recs = evaluate(str(run), ["overopt"], settings, progress=False)
    assert not [r for r in recs if r.get("error")], [r["error"] for r in recs if r.get("error")]
    bon = [r for r in recs if r["metric"] == "gold_reward" and r.get("method") == "bon"]
    assert [r["bon_n"] for r in bon] == [1, 2, 4]
    assert {r["subset"] for r in recs if r["metric"].startswith("fit_")} == {"bon", "rl"}


def test_real_model_run_prints_no_toy_world_fields_and_its_default_eval_exits_0(tmp_path, capsys):
    """A real-model run (no toy world): the printed lines and summaries carry no toy-world
    field (no 'gold labeler nan', 'truth to myth nan'); `rlhf eval <run>` with the default
    suites runs what it can (TruthfulQA from a local file), skips the rest with a note
    (overopt without gold_rm, benchmarks without local data while the hub is offline) and
    exits 0."""
    import csv

    from rlhf_eval.cli import main as eval_main
    run = make_hf_run(tmp_path)
    out = capsys.readouterr().out
    rm_lines = [line for line in out.splitlines() if line.startswith("[rm]")]
    assert rm_lines and not [line for line in rm_lines if "nan" in line or "gold" in line or "myth" in line]
    ppo_lines = [line for line in out.splitlines() if line.startswith("[ppo]")]
    assert ppo_lines and not [line for line in ppo_lines if "nan" in line or "gold" in line], ppo_lines
    rm = read_json(run / "rm" / "summary.json")
    assert not [k for k in rm if "gold" in k or "myth" in k]
    tqa = tmp_path / "tqa.csv"
    with open(tqa, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers", "Source"])
        for i in range(3):
            w.writerow(["A", "B", f"who is entity {i} ?", "a friend", "a friend; a kind one", "an idiot; a myth", ""])
    empty = tmp_path / "no_data"
    empty.mkdir()
    rc = eval_main([str(run), f"data_dir={empty}", f"truthfulqa={tqa}", "--quiet", "--no-write"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err[-2000:]
    for suite in ("overopt", "toxicity", "regression", "bias"):
        assert f"rlhf eval: skipped suite {suite}:" in cap.err, suite
    assert "gold_rm=" in cap.err
    assert "truthfulqa" in cap.out and "ERROR" not in cap.err
    # nothing runnable at all: every suite skipped with its note, a plain line instead of an empty table
    rc = eval_main([str(run), f"data_dir={empty}", "--quiet", "--no-write"])
    cap = capsys.readouterr()
    assert rc == 0 and "no suite could run here" in cap.out and "DataFrame" not in cap.out, cap.out
    # a suite named on the command line is not skipped: it fails, naming what it needs
    rc = eval_main([str(run), "--suite", "overopt", "--quiet", "--no-write"])
    assert rc == 2 and "gold_rm" in capsys.readouterr().err
