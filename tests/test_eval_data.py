"""Data sources: local files through the data_dir setting / RLHF_DATA_DIR, the real
datasets in ../shared/data (skipped when absent), and clear errors for missing ones."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from rlhf_eval import data as d  # noqa: E402
from rlhf_eval.settings import SettingsError, data_dir_candidates, make_settings  # noqa: E402

SHARED = make_settings().resolved_data_dir()
needs_shared = pytest.mark.skipif(
    SHARED is None or not (SHARED / d.TRUTHFULQA_FILE).is_file(),
    reason=f"real datasets not found (set RLHF_DATA_DIR or provide one of {', '.join(map(str, data_dir_candidates()))})")

CSV = '''Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source
Adversarial,Misc,What colour is the sky?,Blue,Blue; Sky blue,Green; Red,x
'''


def test_truthfulqa_csv_to_hub_schema(tmp_path):
    p = tmp_path / "TruthfulQA.csv"
    p.write_text("\ufeff" + CSV)
    rows = d.truthfulqa_rows_from_csv(p)
    assert rows == [{"question": "What colour is the sky?",
                     "mc1_targets": {"choices": ["Blue", "Green", "Red"], "labels": [1, 0, 0]},
                     "mc2_targets": {"choices": ["Blue", "Sky blue", "Green", "Red"], "labels": [1, 1, 0, 0]}}]


def test_data_dir_from_environment(tmp_path, monkeypatch):
    (tmp_path / "TruthfulQA.csv").write_text(CSV)
    monkeypatch.setenv("RLHF_DATA_DIR", str(tmp_path))
    rows, src = d.truthfulqa_rows(make_settings())
    assert len(rows) == 1 and src == str(tmp_path / "TruthfulQA.csv")
    # the setting wins over the environment
    other = tmp_path / "other"
    other.mkdir()
    (other / "TruthfulQA.csv").write_text(CSV.replace("sky", "sea"))
    rows, _ = d.truthfulqa_rows(make_settings({"data_dir": str(other)}))
    assert rows[0]["question"] == "What colour is the sea?"


def test_missing_dataset_errors_name_it(tmp_path, monkeypatch):
    with pytest.raises(d.DataError, match="nope.csv"):
        d.truthfulqa_rows(make_settings({"truthfulqa": str(tmp_path / "nope.csv")}))
    with pytest.raises(d.DataError, match="rtp_decodingtrust"):
        d.rtp_prompts(make_settings({"rtp": str(tmp_path)}), 5)
    # no local copy and no hub: the error names the dataset and says how to fix it
    monkeypatch.setenv("RLHF_DATA_DIR", str(tmp_path))
    with pytest.raises(d.DataError, match="wikitext.*RLHF_DATA_DIR"):
        d.wikitext_text(make_settings())


def test_settings_errors_name_the_key():
    with pytest.raises(SettingsError, match="tox_k"):
        make_settings(["tox_k=0"])
    with pytest.raises(SettingsError, match="bon_max_n"):
        make_settings(["bon_max_n=6"])
    with pytest.raises(SettingsError, match="unknown eval setting 'foo'"):
        make_settings(["foo=1"])
    assert make_settings(["lm_tasks=a,b"]).lm_tasks == ["a", "b"]
    # the run config's rules (rlhf/config.py, one _coerce): no bool as a number, no inf/nan
    with pytest.raises(SettingsError, match="tox_k: expected an integer, got True"):
        make_settings({"tox_k": True})
    with pytest.raises(SettingsError, match="tox_threshold: expected a finite number"):
        make_settings(["tox_threshold=.nan"])
    with pytest.raises(SettingsError, match="tox_temperature: expected a finite number"):
        make_settings(["tox_temperature=inf"])


def test_data_dir_is_found_from_the_working_directory(tmp_path, monkeypatch):
    """A non-editable install has no checkout to look beside: ./shared/data, then
    ../shared/data, relative to where the command runs."""
    monkeypatch.delenv("RLHF_DATA_DIR", raising=False)
    work = tmp_path / "project"
    (work / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    monkeypatch.chdir(work)
    assert make_settings().resolved_data_dir() == work / "shared" / "data"
    (work / "shared" / "data").rmdir()
    assert make_settings().resolved_data_dir() == tmp_path / "shared" / "data"


def test_eval_takes_bare_settings_like_rlhf_run(tmp_path, monkeypatch):
    """`rlhf eval PATH tox_k=5` and `--set tox_k=5` are the same; a bad one exits 2 naming it."""
    from rlhf.cli import build_parser, main, parse_args
    parser = build_parser()
    a = parse_args(parser, ["eval", "tox_k=5", str(tmp_path), "--set", "mc_limit=3", "bootstrap=0"])
    assert a.path == str(tmp_path) and a.overrides == ["mc_limit=3", "tox_k=5", "bootstrap=0"]
    a = parse_args(parser, ["eval", str(tmp_path / "runs" / "beta=0.1,seed=0-1a2b3c4d")])  # a run id is a path
    assert a.overrides == [] and a.path.endswith("beta=0.1,seed=0-1a2b3c4d")
    assert main(["eval", str(tmp_path), "tox_k=0"]) == 2


@pytest.mark.shared_data
@needs_shared
def test_real_truthfulqa_csv_has_817_questions():
    rows, src = d.truthfulqa_rows(make_settings())
    assert len(rows) == 817 and src.endswith("TruthfulQA.csv")
    for r in rows:
        assert r["mc1_targets"]["labels"][0] == 1 and sum(r["mc1_targets"]["labels"]) == 1
        assert len(r["mc1_targets"]["choices"]) >= 2
        assert 1 <= sum(r["mc2_targets"]["labels"]) < len(r["mc2_targets"]["labels"])


@pytest.mark.shared_data
@needs_shared
def test_real_rtp_prompts_split_by_challenging_flag():
    ps, src = d.rtp_prompts(make_settings(), 100, seed=0)
    assert len(ps["challenging"]) == 100 and len(ps["other"]) == 100
    assert not set(ps["challenging"]) & set(ps["other"])
    again, _ = d.rtp_prompts(make_settings(), 100, seed=0)
    assert again == ps  # seeded


@pytest.mark.shared_data
@needs_shared
def test_real_wikitext():
    text, src = d.wikitext_text(make_settings())
    assert " = Robert Boulter = " in text and "\r" not in text
    assert len(text) > 1_000_000
