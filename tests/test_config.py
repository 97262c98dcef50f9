import subprocess
from pathlib import Path

import pytest

from rlhf.config import ConfigError, RunConfig, flatten, load_config, stage_seed

from conftest import REPO, rlhf_cmd

QUICK = REPO / "experiments" / "quickstart.yaml"


def test_quickstart_loads_with_overrides():
    cfg = load_config(QUICK, ["rm.k=9", "seed=3", "ppo.clip_eps=none", "ppo.kl_levels=[1,2]", "ppo.adaptive_kl=true"])
    assert cfg.rm.k == 9 and cfg.seed == 3 and cfg.ppo.clip_eps is None
    assert cfg.ppo.kl_levels == [1.0, 2.0] and cfg.ppo.adaptive_kl is True
    flat = flatten(cfg)
    assert {"ppo.beta", "ppo.ptx_coef", "rm.k", "ppo.clip_eps"} <= set(flat)


@pytest.mark.parametrize("override,key", [
    ("rm.k=1", "rm.k"), ("rm.k=10", "rm.k"), ("ppo.beta=-0.1", "ppo.beta"),
    ("ppo.ptx_coef=-1", "ppo.ptx_coef"), ("ppo.clip_eps=0", "ppo.clip_eps"), ("ppo.lr=0", "ppo.lr"),
    ("pretrain.lr=-1e-3", "pretrain.lr"), ("rm.lr=0", "rm.lr"), ("sft.lr=0", "sft.lr"),
    ("ppo.critic=both", "ppo.critic"), ("stages=[pretrain,bogus]", "stages"),
])
def test_out_of_range_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(QUICK, [override])


@pytest.mark.parametrize("override,key", [
    ("rm.k=four", "rm.k"), ("ppo.beta=abc", "ppo.beta"), ("ppo.adaptive_kl=maybe", "ppo.adaptive_kl"),
    ("rm.k=2.5", "rm.k"), ("ppo.beta=nan", "ppo.beta"),
])
def test_wrong_type_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(QUICK, [override])


def test_unknown_keys():
    with pytest.raises(ConfigError, match="unknown key 'ppo.betta'"):
        load_config(QUICK, ["ppo.betta=0.1"])
    with pytest.raises(ConfigError, match="unknown key 'foo'"):
        load_config(QUICK, ["foo=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(QUICK, ["rm.k"])


def test_yaml_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("rm:\n  kk: 3\n")
    with pytest.raises(ConfigError, match="rm.kk"):
        load_config(p)
    p.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    p.write_text("ppo:\n  steps: 10\n  steps: 20\n")  # plain YAML would keep the last, silently
    with pytest.raises(ConfigError, match=r"c.yaml: not valid YAML(.|\n)*found the key 'steps' twice \(first on line 2\)"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"ppo.kl_levels: expected a list such as \[a, b\], got '\[1,' \(not valid YAML\)"):
        load_config(QUICK, ["ppo.kl_levels=[1,"])  # cut off: a message, not a yaml traceback


def test_cli_bad_input_exits_2_before_compute(tmp_path):
    r = subprocess.run(rlhf_cmd() + ["run", str(QUICK), "rm.k=1", f"out_dir={tmp_path}"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2
    assert "rm.k=1" in r.stderr and "2 to 9" in r.stderr
    assert not any(tmp_path.iterdir()), "nothing may be written for a bad config"
    r = subprocess.run(rlhf_cmd() + ["run", str(QUICK), f"model.source={tmp_path / 'no_model'}", f"out_dir={tmp_path}"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "no_model does not exist" in r.stderr
    assert not any(tmp_path.iterdir()), "not even the run directory's lock"


def test_cli_config_prints_resolved(tmp_path):
    r = subprocess.run(rlhf_cmd() + ["config", str(QUICK), "ppo.beta=0.2"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "beta: 0.2" in r.stdout


def test_config_changes_names_keys_and_ignores_new_switches_at_their_default():
    import yaml
    from rlhf.config import RunConfig, config_changes, dump_yaml, from_dict
    cfg = RunConfig()
    saved = yaml.safe_load(dump_yaml(cfg))
    del saved["ppo"]["ptx_ratio"]  # a run made before ppo.ptx_ratio existed
    assert config_changes(yaml.safe_dump(saved), cfg) == []
    changed = from_dict({"ppo": {"ptx_ratio": 8, "beta": 0.1}})
    assert config_changes(yaml.safe_dump(saved), changed) == [
        f"ppo.beta: {cfg.ppo.beta} -> 0.1", "ppo.ptx_ratio: '<absent>' -> 8"]
    saved["ppo"]["removed_switch"] = 1  # a key the code no longer has is a change
    assert config_changes(yaml.safe_dump(saved), cfg) == ["ppo.removed_switch: 1 -> '<absent>'"]


def test_a_removed_key_in_a_saved_config_loads_and_is_no_change():
    """pretrain.heldout_frac was read nowhere and is gone; runs saved with it still load."""
    import yaml
    from rlhf.config import config_changes, dump_yaml, from_dict
    saved = yaml.safe_load(dump_yaml(RunConfig()))
    saved["pretrain"]["heldout_frac"] = 0.05
    assert from_dict(saved) == RunConfig()
    assert config_changes(yaml.safe_dump(saved), RunConfig()) == []
    with pytest.raises(ConfigError, match="unknown key 'pretrain.heldout_frac'"):
        load_config(QUICK, ["pretrain.heldout_frac=0.1"])  # nobody may set it any more


def test_stage_seeds_keep_the_offsets_results_were_made_with():
    """Changing a stage's seed changes every result: the one function keeps the old values."""
    assert [stage_seed(3, s) for s in ("pretrain", "sft", "rm", "ppo", "ptx", "heldout_probe")] == \
        [3001, 3002, 3003, 3004, 3005, 3006]
    assert stage_seed(3, "ppo", rank=2) == 3004 + 2 * 7919
    with pytest.raises(ConfigError, match="unknown stage 'sfy'"):
        stage_seed(0, "sfy")


def test_every_key_has_a_meaning_and_docs_config_md_is_current():
    from rlhf.config import keys_markdown

    table = keys_markdown()
    rows = [r for r in table.splitlines()[2:]]
    assert len(rows) == len(flatten(RunConfig())), "one row per key"
    blank = [r.split("|")[1].strip() for r in rows if r.rstrip().endswith("|  |")]
    assert not blank, f"keys without a comment in rlhf/config.py: {blank}"
    doc = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    assert doc.endswith(table), "docs/config.md is stale: run `rlhf config --keys` (see its header)"


def test_every_eval_setting_is_in_the_eval_readme():
    from dataclasses import fields

    from rlhf_eval.settings import EvalSettings

    readme = (Path(__file__).resolve().parents[1] / "eval" / "README.md").read_text()
    missing = [f.name for f in fields(EvalSettings) if f"`{f.name}`" not in readme]
    assert not missing, f"eval settings not documented in eval/README.md: {missing}"


def test_built_from_is_what_each_stage_hash_covers():
    """A stage is built from exactly the stages whose keys its stage_hash covers (the shared
    builds of slurm/shared.py bring those along, and only those)."""
    from rlhf.config import STAGES, built_from, stage_keys
    cfg = RunConfig()
    for s in STAGES:
        mine = set(stage_keys(cfg, s))
        for t in STAGES:
            if t == s:
                continue
            covered = set(stage_keys(cfg, t)) <= mine
            assert covered == (t in built_from(s)), (s, t)
    assert built_from("rm") == ("pretrain", "sft") and built_from("ppo") == ("pretrain", "sft", "classifier", "rm")
    with pytest.raises(ConfigError, match="unknown stage"):
        built_from("eval")
