"""Experiment trackers (rlhf/tracking.py, ``logging.report_to``): the same metric names and
values as metrics.jsonl, PPO samples as text, a clear error when a package is missing."""

import importlib.util
import math

import pytest

from rlhf.config import ConfigError, RunConfig, config_changes, dump_yaml, load_config, stage_hash
from rlhf.rundir import read_jsonl, read_jsonl_gz

from conftest import REPO, tiny_overrides


def test_report_to_is_a_list_or_a_comma_string():
    assert load_config(None, ["logging.report_to=tensorboard,wandb"]).logging.report_to == ["tensorboard", "wandb"]
    assert load_config(None, ["logging.report_to=[wandb]"]).logging.report_to == ["wandb"]
    assert load_config(None, ["logging.report_to="]).logging.report_to == []
    with pytest.raises(ConfigError, match="logging.report_to"):
        load_config(None, ["logging.report_to=mlflow"])
    with pytest.raises(ConfigError, match="logging.sample_every"):
        load_config(None, ["logging.sample_every=0"])


def test_logging_keys_are_never_part_of_a_result():
    base = RunConfig()
    other = load_config(None, ["logging.report_to=tensorboard", "logging.sample_every=3"])
    assert config_changes(dump_yaml(base), other) == []
    assert stage_hash(base, "ppo") == stage_hash(other, "ppo")


def test_a_missing_tracker_package_names_the_key_and_the_pip_command(monkeypatch):
    from rlhf import tracking
    real = importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda n: None if n == "wandb" else real(n))
    cfg = load_config(None, ["logging.report_to=wandb"])
    with pytest.raises(ConfigError) as e:
        tracking.check_available(cfg)
    assert "logging.report_to" in str(e.value) and "pip install wandb" in str(e.value)
    tracking.check_available(load_config(None, []))  # nothing requested: nothing needed


def test_scalars_are_the_finite_numbers_of_a_row():
    from rlhf.tracking import scalars
    row = {"step": 3, "loss": 0.5, "ok": True, "name": "x", "lr": 1e-3, "bad": float("nan"), "n": 2}
    assert scalars(row) == {"loss": 0.5, "lr": 1e-3, "n": 2.0}
    assert scalars({"loss": 1.0}, "rm_round1/") == {"rm_round1/loss": 1.0}


def _events(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                    reason="tensorboard is not installed (pip install -e '.[tensorboard]')")
def test_tensorboard_scalars_match_metrics_jsonl(tmp_path):
    from rlhf.pipeline import run_pipeline
    cfg = load_config(REPO / "experiments" / "quickstart.yaml", tiny_overrides(tmp_path, extra=[
        "pretrain.steps=60", "ppo.steps=3", "logging.report_to=tensorboard", "logging.sample_every=2",
        "logging.n_samples=3"]))
    run = run_pipeline(cfg)
    for stage in ("pretrain", "sft", "rm", "ppo"):
        rows = read_jsonl(run / stage / "metrics.jsonl")
        assert rows, stage
        acc = _events(run / "tracking" / "tensorboard" / stage)
        tags = set(acc.Tags()["scalars"])
        want = {k for r in rows for k, v in r.items()
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        assert tags == want, stage
        for tag in want:
            got = [(e.step, e.value) for e in acc.Scalars(tag)]
            exp = [(r["step"], float(r[tag])) for r in rows if tag in r]
            assert [s for s, _ in got] == [s for s, _ in exp], (stage, tag)
            assert [v for _, v in got] == pytest.approx([v for _, v in exp], rel=1e-6, abs=1e-7), (stage, tag)
    # PPO's samples as text, at iterations 0 and 2 (logging.sample_every=2), 3 rollouts each
    acc = _events(run / "tracking" / "tensorboard" / "ppo")
    text_tags = [t for t in acc.Tags()["tensors"] if t.startswith("samples")]
    assert text_tags, acc.Tags()
    events = acc.Tensors(text_tags[0])
    assert [e.step for e in events] == [0, 2]
    table = events[0].tensor_proto.string_val[0].decode()
    first = [r for r in read_jsonl_gz(run / "ppo" / "samples.jsonl.gz") if r["step"] == 0]
    assert "rm_score" in table and "ppo_reward" in table and "gold_reward" in table
    assert table.count("\n") == 2 + 3  # header, rule, 3 rows
    assert f"{first[0]['rm_score']:.4g}" in table


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                    reason="tensorboard is not installed (pip install -e '.[tensorboard]')")
def test_force_sets_the_earlier_attempts_events_aside(tmp_path):
    """--force redoes a stage: its TensorBoard folder then holds the new attempt's curves only,
    and the first attempt's event files are kept beside it."""
    from rlhf.pipeline import run_pipeline
    over = tiny_overrides(tmp_path, extra=["stages=[pretrain]", "pretrain.steps=4", "logging.report_to=tensorboard"])
    run = run_pipeline(load_config(REPO / "experiments" / "quickstart.yaml", over))
    first = read_jsonl(run / "pretrain" / "metrics.jsonl")
    run = run_pipeline(load_config(REPO / "experiments" / "quickstart.yaml", over + ["pretrain.lr=1e-4"]), force=True)
    second = read_jsonl(run / "pretrain" / "metrics.jsonl")
    tb = run / "tracking" / "tensorboard"
    aside = sorted(p.name for p in tb.iterdir() if p.name.startswith("pretrain.before-"))
    assert len(aside) == 1, sorted(p.name for p in tb.iterdir())

    def losses(folder):
        return [e.value for e in _events(folder).Scalars("loss")]
    assert losses(tb / "pretrain") == pytest.approx([r["loss"] for r in second if "loss" in r], rel=1e-6)
    assert losses(tb / aside[0]) == pytest.approx([r["loss"] for r in first if "loss" in r], rel=1e-6)
    assert losses(tb / "pretrain") != losses(tb / aside[0])


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                    reason="tensorboard is not installed (pip install -e '.[tensorboard]')")
@pytest.mark.parametrize("resume", [True, False])
def test_a_resumed_stage_shows_each_step_once_in_tensorboard(tmp_path, resume):
    """PPO resumed from a checkpoint at step 3 after an attempt that had logged steps 0..5:
    TensorBoard shows steps 0..7 once each, 3..7 from the second attempt (without
    resume_from, steps 3..5 would appear twice)."""
    from rlhf import tracking
    cfg = load_config(None, ["logging.report_to=tensorboard"])
    with tracking.stage(cfg, tmp_path, "ppo", fresh=False):
        for step in range(6):
            tracking.log({"step": step, "kl": float(step)})
    with tracking.stage(cfg, tmp_path, "ppo", fresh=False):
        if resume:
            tracking.resume_from(3)
        for step in range(3, 8):
            tracking.log({"step": step, "kl": 100.0 + step})
    got = [(e.step, e.value) for e in _events(tmp_path / "tracking" / "tensorboard" / "ppo").Scalars("kl")]
    want = [(0, 0.0), (1, 1.0), (2, 2.0)] + [(s, 100.0 + s) for s in range(3, 8)]
    if resume:
        assert got == want
    else:  # the defect resume_from mends: the earlier attempt's steps 3..5 are still there
        assert sorted(s for s, _ in got) == [0, 1, 2, 3, 3, 4, 4, 5, 5, 6, 7]


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                    reason="wandb is not installed (pip install -e '.[wandb]'): the offline run is not tested")
def test_wandb_offline_writes_a_run_without_network(tmp_path, monkeypatch):
    from rlhf import tracking
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_config(None, [f"out_dir={tmp_path}", "name=wb", "logging.report_to=wandb"])
    with tracking.stage(cfg, tmp_path / "wb", "pretrain") as tr:
        assert tr is not None and tr.writers == []  # opened at the first row
        tracking.log({"step": 0, "loss": 2.0})
        assert tr.writers == ["wandb"]
        tracking.log({"step": 1, "loss": 1.5})
        tr.text(1, [{"prompt": "p", "response": "r", "rm_score": 0.1}])
    runs = list((tmp_path / "wb" / "tracking" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
