"""The findings suite: rm.loss=pairs, shared stages, the claims table, `rlhf findings`.

The claims machinery is checked twice: on hand-built tables of runs and records (every kind
of statistic, a claim built to hold and one built to fail, a failed run, one seed), and on
a tiny real suite run end to end with the local executor (2 seeds x 2 beta cells, shared
pretrain/sft/rm, `rlhf eval` overopt records, report, docs page, idempotent re-run).
"""

import json
import math
import os
import random
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from conftest import REPO, TINY

os.environ.setdefault("MPLBACKEND", "Agg")


# ----------------------------------------------------------------------------- rm.loss
def _rows(n_prompts, k):
    return [{"prompt": f"p{i}", "responses": [f"p{i}r{j}" for j in range(k)], "gold": [float(-j) for j in range(k)],
             "kinds": ["other"] * k} for i in range(n_prompts)]


def test_rm_pairs_one_prompt_equals_kwise_loss_by_hand():
    from rlhf.losses import kwise_ranking_loss
    from rlhf.reward import ranking_batches
    rows = _rows(1, 3)
    kw = ranking_batches(rows, "kwise", 1, random.Random(0))
    pr = ranking_batches(rows, "pairs", 1, random.Random(0))
    assert len(kw) == len(pr) == 1 and len(pr[0]) == 3  # one prompt's C(3,2) pairs in one batch
    score = {"p0r0": 2.0, "p0r1": 1.0, "p0r2": -1.0}
    r_kw = torch.tensor([[score[t] for t in kw[0][0]["responses"]]])
    r_pr = torch.tensor([[score[t] for t in row["responses"]] for row in pr[0]])
    # by hand: mean of -log sigmoid(diff) over the pairs (0,1), (0,2), (1,2): diffs 1, 3, 2
    by_hand = (math.log1p(math.exp(-1)) + math.log1p(math.exp(-3)) + math.log1p(math.exp(-2))) / 3
    assert kwise_ranking_loss(r_kw).item() == pytest.approx(by_hand, abs=1e-6)
    assert kwise_ranking_loss(r_pr).item() == pytest.approx(by_hand, abs=1e-6)
    # every pair keeps the labeler's order (the preferred response first)
    for row in pr[0]:
        a, b = (int(t[-1]) for t in row["responses"])
        assert a < b and row["gold"][0] > row["gold"][1]


def test_rm_pairs_same_pairs_and_steps_but_shuffled_across_prompts():
    from rlhf.reward import ranking_batches
    rows = _rows(20, 4)
    kw = ranking_batches(rows, "kwise", 8, random.Random(1))
    pr = ranking_batches(rows, "pairs", 8, random.Random(1))
    assert len(kw) == len(pr) == 3  # ceil(20/8) optimizer steps per epoch in both
    assert [len(b) for b in pr] == [48, 48, 24]  # batch_size * C(4,2) pairs
    kw_pairs = sorted((r["responses"][i], r["responses"][j]) for b in kw for r in b
                      for i in range(4) for j in range(i + 1, 4))
    pr_pairs = sorted(tuple(r["responses"]) for b in pr for r in b)
    assert kw_pairs == pr_pairs  # the same 120 pairs per epoch
    # the order differs: a pairs batch mixes many prompts; a kwise batch element holds one prompt
    assert len({r["prompt"] for r in pr[0]}) > 8
    first_prompts = [r["prompt"] for r in pr[0][:6]]
    assert len(set(first_prompts)) > 1
    with pytest.raises(ValueError, match="rm.loss"):
        ranking_batches(rows, "listwise", 8, random.Random(1))


def test_rm_loss_config_key():
    from rlhf.config import ConfigError, load_config
    assert load_config(REPO / "experiments" / "quickstart.yaml", ["rm.loss=pairs"]).rm.loss == "pairs"
    with pytest.raises(ConfigError, match="rm.loss"):
        load_config(REPO / "experiments" / "quickstart.yaml", ["rm.loss=triples"])


# ----------------------------------------------------------------------------- stage hashes
def test_build_order_builders_first():
    from rlhf_slurm.shared import build_order
    # (pretrain hash, ppo hash) of 6 runs: seeds A and B, where runs 1 and 3 repeat run 0's PPO
    keys = [("A", "x"), ("A", "x"), ("A", "y"), ("A", "x"), ("B", "x"), ()]
    assert build_order(keys) == [0, 4, 5, 2, 1, 3]


def test_shared_builds_carry_the_classifier_only_where_it_is_built_from():
    """A shared PPO build of a classifier-rewarded run trains its classifier; a shared RM build
    never carries one (the RM's hash does not cover classifier.*); a run without a classifier
    stage builds none; every stage the config knows can be shared."""
    from rlhf.config import STAGES, load_config
    from rlhf_slurm.shared import SHAREABLE, build_stages
    assert tuple(SHAREABLE) == STAGES
    with_clf = load_config(REPO / "experiments" / "quickstart.yaml",
                           ["stages=[pretrain,sft,classifier,rm,ppo]", "ppo.reward=classifier"])
    plain = load_config(REPO / "experiments" / "quickstart.yaml")
    assert build_stages(with_clf, "ppo") == ["pretrain", "sft", "classifier", "rm", "ppo"]
    assert build_stages(plain, "ppo") == ["pretrain", "sft", "rm", "ppo"]
    assert build_stages(with_clf, "rm") == build_stages(plain, "rm") == ["pretrain", "sft", "rm"]
    assert build_stages(with_clf, "classifier") == ["pretrain", "classifier"]
    assert build_stages(plain, "sft") == ["pretrain", "sft"]


def test_stage_hash_depends_only_on_the_stage_keys():
    from rlhf.config import load_config, stage_hash
    base = load_config(REPO / "experiments" / "quickstart.yaml")

    def h(over, stage):
        return stage_hash(load_config(REPO / "experiments" / "quickstart.yaml", over), stage)
    for stage in ("world", "pretrain", "sft", "rm", "ppo"):  # name, out_dir, threads, device, stages: no effect
        assert h(["name=x", "out_dir=/tmp/y", "threads=2", "device=cpu", "stages=[pretrain]",
                  "model.gradient_checkpointing=true", "logging.report_to=tensorboard",
                  f"ppo.parallel_critic={not base.ppo.parallel_critic}"],
                 stage) == stage_hash(base, stage)
    assert h(["ppo.beta=0.3"], "rm") == stage_hash(base, "rm") and h(["ppo.beta=0.3"], "ppo") != stage_hash(base, "ppo")
    assert h(["rm.k=2"], "sft") == stage_hash(base, "sft") and h(["rm.k=2"], "rm") != stage_hash(base, "rm")
    assert h(["sft.lr=0.01"], "pretrain") == stage_hash(base, "pretrain")
    assert h(["sft.lr=0.01"], "sft") != stage_hash(base, "sft")
    assert h(["seed=3"], "world") == stage_hash(base, "world") and h(["seed=3"], "pretrain") != \
        stage_hash(base, "pretrain")
    assert h(["world.n_entities=10"], "world") != stage_hash(base, "world")


# ----------------------------------------------------------------------------- claims on hand-built data
def _data(runs, records):
    from rlhf_analysis.data import Data
    rec = pd.DataFrame(records, columns=["run_id", "checkpoint_label", "suite", "metric", "subset", "value",
                                         "delta_vs_ref", "error"])
    return Data(runs=pd.DataFrame(runs), records=rec, curves=pd.DataFrame(columns=["run_id", "step"]),
                sources=["x/sw"])


def _claim(rows, cid="t"):
    from rlhf_analysis.claims import Claim
    return Claim(id=cid, name="test", text="", rows=rows)


def _rec(run, cp, suite, metric, subset, value, delta=None):
    return [run, cp, suite, metric, subset, value, delta, None]


def test_claims_hold_fail_failed_run_and_one_seed():
    from rlhf_analysis.claims import claims_table
    runs = [{"source": "x/sw", "run_id": f"s{s}", "state": "done", "seed": s, "ppo.beta": 0.0,
             "ppo.final_kl": 1.0} for s in range(3)]
    runs.append({"source": "x/sw", "run_id": "s3", "state": "diverged", "seed": 3, "ppo.beta": 0.0,
                 "ppo.final_kl": float("nan")})
    recs = []
    for s, (a, b) in enumerate([(0.5, 0.6), (0.5, 0.7), (0.4, 0.55)]):
        recs += [_rec(f"s{s}", "sft", "truthfulqa", "mc1", "heldout", a),
                 _rec(f"s{s}", "ppo", "truthfulqa", "mc1", "heldout", b)]
    recs.append(_rec("s3", "ppo", "truthfulqa", "mc1", "heldout", 99.0))  # a diverged run: never averaged
    src = lambda cp: {"sweep": "sw", "record": {"suite": "truthfulqa", "metric": "mc1", "subset": "heldout",  # noqa
                                                "checkpoint": cp}}
    rows = claims_table([_claim([
        {"id": "hold", "kind": "paired", "x": src("ppo"), "y": src("sft"), "range": [-1, 1],
         "verdict": ["ci_low > 0"]},
        {"id": "fail", "kind": "paired", "x": src("ppo"), "y": src("sft"), "range": [-1, 1],
         "verdict": ["ci_high < 0"]},
        {"id": "clip", "kind": "mean", "x": src("ppo"), "range": [0, 0.7], "verdict": ["ci_high <= 0.7"]},
    ])], _data(runs, recs))
    hold, fail, clip = rows
    # by hand: diffs 0.1, 0.2, 0.15 -> mean 0.15, sd 0.05, t(0.975, 2) = 4.302653 -> half 0.124211
    assert hold.value == pytest.approx(0.15) and hold.n == 3
    assert hold.ci_low == pytest.approx(0.15 - 4.302653 * 0.05 / math.sqrt(3), abs=1e-5)
    assert hold.ci_high == pytest.approx(0.15 + 4.302653 * 0.05 / math.sqrt(3), abs=1e-5)
    assert hold.ci_method == "t-interval, n=3"
    assert hold.verdict == "holds" and fail.verdict == "does not hold"
    assert hold.runs == "n=3 of 4; 1 diverged"
    # mean 0.6167, CI [0.40, 0.83] clipped to the range's 0.7
    assert clip.value == pytest.approx((0.6 + 0.7 + 0.55) / 3) and clip.ci_high == 0.7

    # one seed: point value, no CI, no verdict, says why
    one = _data(runs[:1], recs[:2])
    (r,) = claims_table([_claim([{"id": "one", "kind": "paired", "x": src("ppo"), "y": src("sft"),
                                  "verdict": ["ci_low > 0"]}])], one)
    assert r.value == pytest.approx(0.1) and math.isnan(r.ci_low) and math.isnan(r.ci_high)
    assert r.ci_method == "CI needs >= 2 seeds" and "CI needs >= 2 seeds" in r.verdict
    from rlhf_analysis.claims import ci_text, to_markdown
    assert ci_text(r) == "CI needs >= 2 seeds"
    assert "[0.1, 0.1]" not in to_markdown([r], [_claim([])])


def test_claims_overopt_monotone_within_ci_and_required_pairs():
    from rlhf_analysis.claims import claims_table
    runs, recs = [], []
    # beta cells 0, 0.1, 1: final KL 8, 4, 1 (+ seed noise) -> monotone and ends disjoint
    for b, kl in ((0.0, 8.0), (0.1, 4.0), (1.0, 1.0)):
        for s in range(3):
            rid = f"b{b}s{s}"
            runs.append({"source": "x/sw", "run_id": rid, "state": "done", "seed": s, "ppo.beta": b,
                         "ppo.final_kl": kl + 0.1 * s, "rm.pairs": 120 - 30 * s, "g": 0.3 + 0.01 * s})
            if b == 0.0:  # gold rises then falls along sqrt(KL); the RM score keeps rising
                for cp, k, gold, rm in (("sft", 0.0, 0.0, 0.0), ("ppo/kl_1", 1.0, 0.5 + 0.1 * s, 1.0),
                                        ("ppo/kl_4", 4.0, 0.6, 2.0), ("ppo", 9.0, 0.2, 3.0)):
                    recs += [_rec(rid, cp, "overopt", "gold_reward", "rl", gold),
                             _rec(rid, cp, "overopt", "rm_score", "rl", rm),
                             _rec(rid, cp, "overopt", "kl", "rl", k)]
    sw = {"sweep": "sw"}
    rows = claims_table([_claim([
        {"id": "drop", "kind": "overopt", "quantity": "gold_drop", "x": {**sw, "where": {"ppo.beta": 0}},
         "verdict": ["ci_low > 0"]},
        {"id": "rise", "kind": "overopt", "quantity": "rm_rise", "x": {**sw, "where": {"ppo.beta": 0}},
         "verdict": ["ci_low > 0"]},
        {"id": "fit", "kind": "overopt_fit", "method": "rl", "x": {**sw, "where": {"ppo.beta": 0}},
         "verdict": ["value >= 0.9"]},
        {"id": "mono", "kind": "monotone", "over": "ppo.beta", "x": {**sw, "summary": "ppo.final_kl"},
         "verdict": ["monotone"]},
        {"id": "monofail", "kind": "monotone", "over": "ppo.beta", "x": {**sw, "summary": "g"},
         "verdict": ["monotone"]},
        {"id": "within", "kind": "within_ci", "x": {**sw, "where": {"ppo.beta": "min>0"}, "summary": "g"},
         "y": {**sw, "where": {"ppo.beta": 0}, "summary": "g"}, "verdict": ["within_ci"]},
        {"id": "pairs", "kind": "mean", "x": {**sw, "where": {"ppo.beta": 0}, "summary": "g"},
         "require_each_seed": {**sw, "where": {"ppo.beta": 0}, "summary": "rm.pairs", "min": 100},
         "verdict": ["ci_low > 0"]},
    ])], _data(runs, recs))
    drop, rise, fit, mono, monofail, within, pairs = rows
    # peaks: seed 0 at kl_4 (0.6), seed 1 at kl_1 (0.6, tied with kl_4: the earlier), seed 2 at kl_1
    # (0.7); final gold 0.2; RM score 1 at kl_1, 2 at kl_4, 3 at the end
    assert drop.per_seed == pytest.approx({0: 0.4, 1: 0.4, 2: 0.5}) and drop.verdict == "holds"
    assert rise.per_seed == pytest.approx({0: 1.0, 1: 2.0, 2: 2.0}) and rise.verdict == "holds"
    # the fit uses rlhf_eval.metrics.fit_overoptimization on the seed-averaged points
    from rlhf_eval.metrics import fit_overoptimization
    d = [0.0, 1.0, 2.0, 3.0]
    g = [0.0, 0.6, 0.6, 0.2]
    assert fit.value == pytest.approx(fit_overoptimization(d, g, "rl")["r2"])
    assert fit.verdict == ("holds" if fit.value >= 0.9 else "does not hold")
    assert mono.verdict == "holds" and mono.value == pytest.approx(7.0)
    assert monofail.verdict == "does not hold"  # the same value in every cell: not monotone
    assert within.verdict == "holds"
    assert pairs.verdict == "does not hold" and "need >= 100" in pairs.detail  # seeds 1, 2 have < 100 pairs


def test_claims_file_errors_name_the_row(tmp_path):
    from rlhf_analysis.claims import ClaimsError, load_claims
    p = tmp_path / "c.yaml"
    row = {"id": "a1", "kind": "mean", "x": {"sweep": "s", "summary": "ppo.final_kl"}}

    def bad(match, **change):
        p.write_text(yaml.safe_dump({"claims": [{"id": "a", "rows": [{**row, **change}]}]}))
        with pytest.raises(ClaimsError, match=match):
            load_claims(p)
    bad(r"\(a\) rows\[0\].*ci_low >> 0", verdict=["ci_low >> 0"])
    bad(r"rows\[0\]: x: give 'summary'", x={"sweep": "s"})  # no value to average
    bad(r"rows\[0\]: x: 'where' must map config keys", x={**row["x"], "where": 5})
    bad(r"rows\[0\]: x: 'record' must be a mapping with 'suite' and 'metric'", x={"sweep": "s", "record": {"suite": "o"}})
    bad(r"rows\[0\]: require_each_seed: must be a mapping with at least 'sweep'",
        require_each_seed={"summary": "rm.test_truth_myth_pairs", "min": 100})
    bad(r"rows\[0\]: require_each_seed needs 'min'", require_each_seed={**row["x"]})
    bad(r"rows\[0\]: range must be \[low, high\]", range=[0])
    bad(r"rows\[0\]: kind monotone needs 'over'", kind="monotone")
    p.write_text(yaml.safe_dump({"claims": [{"id": "a", "rows": [row]}]}))
    from rlhf_analysis.data import Data
    import pandas as pd
    runs = pd.DataFrame([{"run_id": "r", "state": "done", "seed": 0, "source": str(tmp_path / "other" / "runs" / "r")}])
    with pytest.raises(ClaimsError, match=r"claim a, row a1: sweep 's' is not among the report's inputs"):
        from rlhf_analysis.claims import claims_table
        claims_table(load_claims(p), Data(runs=runs, records=pd.DataFrame(), curves=pd.DataFrame()))
    claims = load_claims(REPO / "experiments" / "findings" / "claims.yaml")
    assert [c.id for c in claims] == list("abcdefghi")


# ----------------------------------------------------------------------------- the suite, end to end
@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("findings")
    sdir = root / "suite"
    sdir.mkdir()
    sweep = {"name": "tiny", "base": {"config": str(REPO / "experiments" / "quickstart.yaml"),
                                      "overrides": list(TINY)},
             "grid": {"ppo.beta": [0.0, 0.1]}, "seeds": [0, 1], "share_stages": ["pretrain", "sft", "rm"]}
    (sdir / "sweep_tiny.yaml").write_text(yaml.safe_dump(sweep))
    (sdir / "eval.yaml").write_text(yaml.safe_dump({
        "settings": {"overopt_n_prompts": 4, "overopt_samples": 2, "bon_max_n": 2, "overopt_max_new_tokens": 8},
        "sweeps": {"tiny": {"suites": ["overopt"], "checkpoints": ["sft", "ppo"]}}}))
    gold = lambda cp: {"sweep": "tiny", "where": {"ppo.beta": 0},  # noqa: E731
                       "record": {"suite": "overopt", "metric": "gold_reward", "subset": "rl", "checkpoint": cp}}
    (sdir / "claims.yaml").write_text(yaml.safe_dump({"claims": [
        {"id": "a", "name": "RLHF helps", "rows": [{"id": "a", "statistic": "d gold", "kind": "paired",
                                                     "x": gold("ppo"), "y": gold("sft"), "verdict": ["ci_low > 0"]}]},
        {"id": "e", "name": "beta controls KL", "rows": [{"id": "e", "statistic": "final KL", "kind": "monotone",
                                                          "over": "ppo.beta",
                                                          "x": {"sweep": "tiny", "summary": "ppo.final_kl"},
                                                          "verdict": ["monotone"]}]},
        {"id": "i", "name": "RLHF changes bias little",
         "rows": [{"id": "i2", "statistic": "d bias", "kind": "paired", "range": [-2, 2],
                   "x": {**gold("ppo"), "record": {**gold("ppo")["record"], "metric": "stereotype_bias"}},
                   "y": {**gold("sft"), "record": {**gold("sft")["record"], "metric": "stereotype_bias"}},
                   "verdict": ["in [-0.05, 0.05]"]}]}]}))
    from rlhf_slurm.findings import run_findings
    logs = []
    out = root / "out"
    res = run_findings(sdir, "local", None, out, jobs=1, doc=root / "docs" / "findings.md", command="rlhf findings X",
                       say=logs.append)
    return {"root": root, "out": out, "res": res, "logs": logs, "suite": sdir}


def _sweep_runs(out):
    return sorted(p for p in (out / "sweeps" / "tiny" / "runs").iterdir() if p.is_dir())


def test_findings_shares_stages_and_reports_claims(suite):
    out, res = suite["out"], suite["res"]
    assert res["failed_runs"] == [] and res["failed_evals"] == []
    runs = _sweep_runs(out)
    assert len(runs) == 4
    shared = out / "sweeps" / "shared"
    for stage in ("pretrain", "sft", "rm"):  # built once per seed, in the shared build area
        assert len(list(shared.glob(f"{stage}-*/{stage}/DONE"))) == 2
    by_seed = {}
    for r in runs:
        by_seed.setdefault(yaml.safe_load((r / "config.yaml").read_text())["seed"], []).append(r)
    for seed, (r1, r2) in by_seed.items():
        for stage in ("world", "pretrain", "sft", "rm"):
            for f in (r1 / stage).rglob("*"):
                if f.is_file():  # hard links to one file: byte-identical and not recomputed
                    g = r2 / stage / f.relative_to(r1 / stage)
                    assert os.stat(f).st_ino == os.stat(g).st_ino, (f, g)
        assert os.stat(r1 / "ppo" / "summary.json").st_ino != os.stat(r2 / "ppo" / "summary.json").st_ino
    for seed, pair in by_seed.items():  # one run of the seed built pretrain/sft/rm, the other copied them
        logs = [(r / "findings_run.log").read_text() for r in pair]
        assert sorted("[pretrain] GPT-2" in log for log in logs) == [False, True]
        assert sorted("[shared] sft" in log and " from " in log.split("[shared] sft")[1].splitlines()[0]
                      for log in logs) == [False, True]
    # claim a from the real overopt records, by hand
    diffs, bias = [], []
    for r in runs:
        cfg = yaml.safe_load((r / "config.yaml").read_text())
        if cfg["ppo"]["beta"] != 0:
            continue
        recs = [json.loads(x) for x in (r / "eval" / "records.jsonl").read_text().splitlines()]
        g = {x["checkpoint_label"]: x["value"] for x in recs if x["suite"] == "overopt" and x["subset"] == "rl"
             and x["metric"] == "gold_reward" and not x.get("error")}
        diffs.append(g["ppo"] - g["sft"])
        # the KL-level policies run_ppo saved are the RL points the eval read (not fabricated ones)
        saved = sorted(p.name for p in (r / "ppo" / "kl").glob("kl_*") if p.is_dir())
        assert saved, "PPO saved no KL-level policy (kl_levels 0.01, 0.1)"
        assert {f"ppo/{n}" for n in saved} | {"sft", "ppo"} == set(g), (saved, sorted(g))
        b = {x["checkpoint_label"]: x["value"] for x in recs if x["metric"] == "stereotype_bias"}
        bias.append(b["ppo"] - b["sft"] if None not in (b["ppo"], b["sft"]) else math.nan)
    table = pd.read_csv(out / "report" / "tables" / "claims.csv")
    i2 = table[table["row"] == "i2"].iloc[0]  # claim i, Δ bias, from the same records by hand
    if not any(map(math.isnan, bias)):
        assert i2["value"] == pytest.approx(sum(bias) / 2, abs=1e-9) and i2["n"] == 2
        assert i2["verdict"] == ("holds" if -0.05 <= i2["ci_low"] and i2["ci_high"] <= 0.05 else "does not hold")
    a = table[table["row"] == "a"].iloc[0]
    assert a["value"] == pytest.approx(sum(diffs) / 2, abs=1e-9)
    assert a["n"] == 2 and a["ci_method"] == "t-interval, n=2"
    assert a["verdict"] == ("holds" if a["ci_low"] > 0 else "does not hold")
    e = table[table["row"] == "e"].iloc[0]
    assert e["verdict"] == "does not hold"  # two beta values: monotone needs >= 3
    for ext in ("png", "pdf", "csv"):
        assert (out / "report" / "figures" / f"claim_a.{ext}").is_file()
    assert (out / "report" / "tables" / "claims.tex").read_text().count(r"\toprule") == 1
    doc = (suite["root"] / "docs" / "findings.md").read_text()
    assert "rlhf findings X" in doc and "| a ([figure](findings/claim_a.png))" in doc
    assert (suite["root"] / "docs" / "findings" / "claim_a.png").is_file()
    assert "torch" in doc and "Wall time per phase" in doc
    # the commits every run and shared stage build was made at, counted from their meta.json
    import re
    line = next(x for x in doc.splitlines() if x.startswith("- Runs and shared stages built at"))
    n_meta = len(list(out.glob("sweeps/tiny/runs/*/meta.json"))) + len(list(out.glob("sweeps/shared/*/meta.json")))
    assert n_meta > 4 and sum(int(x) for x in re.findall(r"\((\d+)\)", line)) == n_meta, line


def test_findings_report_compares_with_itself_as_unchanged(suite):
    """The suite's report carries the per-seed values (claims_seeds.csv) behind claims.csv,
    and `rlhf compare` of that report against itself pairs them: every Δ 0, no verdict changed."""
    from rlhf_analysis import compare as K
    t = K.load_table(suite["out"])  # a findings output directory: its report/
    seeds = pd.read_csv(suite["out"] / "report" / "tables" / "claims_seeds.csv")
    assert "a" in set(seeds["row"]) and set(seeds["row"]) <= {"a", "i2"}  # e (monotone) has no per-seed values
    assert sorted(t.seeds[("a", "a")]) == [0, 1]
    changes, only_base, only_new = K.compare(t, t)
    assert [c.row for c in changes] == ["a", "e", "i2"] and not only_base and not only_new
    a = next(c for c in changes if c.row == "a")
    assert a.delta == 0 and a.method == "paired t, n=2" and a.differs is False
    assert not any(c.verdict_changed for c in changes)


def test_findings_evals_run_on_the_device_the_runs_did(suite, monkeypatch):
    from rlhf_slurm.findings import EVAL_MARKER, eval_plan, job_env, load_eval_spec, load_sweeps
    sweeps = load_sweeps(suite["suite"], suite["out"], None)
    run = _sweep_runs(suite["out"])[0]
    marker = run / "eval" / EVAL_MARKER
    saved = marker.read_bytes()
    marker.unlink()  # this run's eval is to do again
    try:
        jobs = eval_plan(sweeps, load_eval_spec(suite["suite"]))
    finally:
        marker.write_bytes(saved)
    (job,) = jobs
    assert Path(job["run_dir"]) == run and job["gpus"] == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # a GPU machine: the CPU-trained runs are evaluated on the CPU
    assert job_env(job)["CUDA_VISIBLE_DEVICES"] == ""


def test_findings_rerun_is_idempotent_and_counts_a_diverged_run(suite):
    import shutil
    from rlhf_slurm.findings import run_findings
    out = suite["out"]
    baseline = suite["root"] / "baseline" / "report"  # the report as it was: the re-run is compared with it
    shutil.copytree(out / "report", baseline)
    (baseline.parent / "sweeps").symlink_to(out / "sweeps")  # as in a findings output directory
    # mark seed 1's beta=0 run diverged, as the pipeline leaves it
    for r in _sweep_runs(out):
        cfg = yaml.safe_load((r / "config.yaml").read_text())
        if cfg["ppo"]["beta"] == 0 and cfg["seed"] == 1:
            st = json.loads((r / "status.json").read_text())
            st.update(state="diverged", error="NaN in the PPO loss at step 3")
            (r / "status.json").write_text(json.dumps(st))
    logs = []
    res = run_findings(suite["suite"], "local", None, out, jobs=1, doc=suite["root"] / "docs" / "findings.md",
                       command="rlhf findings X", say=logs.append, baseline=baseline)
    text = "\n".join(logs)
    assert "0 to run" in text and "[eval] 0 run evaluations to do" in text  # nothing redone
    assert len(res["failed_runs"]) == 1
    a = pd.read_csv(out / "report" / "tables" / "claims.csv").set_index("row").loc["a"]
    assert a["runs"] == "n=1 of 2; 1 diverged"
    assert a["ci_method"] == "CI needs >= 2 seeds" and math.isnan(a["ci_low"])
    assert "no verdict" in a["verdict"]
    # against the baseline: row a lost seed 1, so no pairing and (1 seed) no CI; its verdict changed
    cmp = pd.read_csv(out / "compare" / "compare.csv").set_index("row")
    assert cmp.loc["a", "method"] == "no CI: fewer than 2 seeds" and bool(cmp.loc["a", "verdict_changed"])
    assert res["compare"] == str(out / "compare" / "compare.md")
    doc = (suite["root"] / "docs" / "findings.md").read_text()
    section = doc.split("## Against the baseline")[1].split("## Figures")[0]
    assert f"Base: `{baseline}`" in section and "| a | d gold |" in section
    assert "verdict(s) changed: a (" in section and "no verdict (CI needs >= 2 seeds)" in section
    n_meta = len(list(out.glob("sweeps/tiny/runs/*/meta.json"))) + len(list(out.glob("sweeps/shared/*/meta.json")))
    assert "The baseline's runs and shared stages were built at `" in section and f"` ({n_meta})." in section


def test_findings_bad_suite_directory_is_an_input_error(tmp_path, capsys):
    from rlhf.cli import main
    assert main(["findings", str(tmp_path / "nope")]) == 2
    (tmp_path / "claims.yaml").write_text("claims: []\n")
    capsys.readouterr()
    assert main(["findings", str(tmp_path), "--out", str(tmp_path / "out"), "--baseline", str(tmp_path)]) == 2
    assert f"--baseline {tmp_path}: {tmp_path / 'tables' / 'claims.csv'} not found" in capsys.readouterr().err
    assert main(["findings", str(tmp_path), "--out", str(tmp_path / "out")]) == 2  # no sweep_*.yaml
    (tmp_path / "sweep_x.yaml").write_text(yaml.safe_dump({"grid": {"ppo.betta": [0]}}))
    assert main(["findings", str(tmp_path), "--out", str(tmp_path / "out")]) == 2  # unknown key: nothing runs
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- the doc's commit line
def test_findings_doc_names_the_sweep_files_commit_where_it_differs_from_the_code(tmp_path):
    """docs/findings.md records the code's commit, and the sweep files' own commit when they
    come from another checkout (a worktree with other experiments/ while the package is
    installed from main recorded only the package's commit once)."""
    import subprocess
    from types import SimpleNamespace
    from rlhf.rundir import git_commit
    from slurm.findings import _commits
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "sweep.yaml").write_text("name: x\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(exp)], check=True)
    subprocess.run(git + ["-C", str(exp), "add", "sweep.yaml"], check=True)
    subprocess.run(git + ["-C", str(exp), "commit", "-qm", "x"], check=True)
    theirs = subprocess.run(["git", "-C", str(exp), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    code = git_commit().removesuffix("-dirty")
    other = _commits([SimpleNamespace(source=str(exp / "sweep.yaml"))])
    assert code in other and f"the sweep files' checkout: `{theirs}`" in other
    same = _commits([SimpleNamespace(source=str(REPO / "experiments" / "findings" / "sweep_default.yaml"))])
    assert code in same and "sweep files" not in same


# ----------------------------------------------------------------------------- same runs on every entry point
def test_findings_runs_are_at_one_thread_in_their_run_ids_too(tmp_path):
    """The suite runs every run at threads=1 and its run ids say so: `rlhf sweep` of a file at
    threads=2 (other floats) makes other runs, never taken for the suite's; the repo's suite
    files ask for threads=1 themselves, so both commands make the same runs."""
    from rlhf_slurm.findings import load_sweeps
    from rlhf_slurm.sweep import expand, load_sweep
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "sweep_x.yaml").write_text(yaml.safe_dump({
        "name": "x", "base": {"config": str(REPO / "experiments" / "quickstart.yaml")}, "grid": {"ppo.beta": [0.1]},
        "seeds": [0]}))
    (ours,) = load_sweeps(suite, tmp_path / "out", None)
    theirs = load_sweep(suite / "sweep_x.yaml", out_dir=str(tmp_path / "out" / "sweeps"))
    (a,), (b,) = expand(ours), expand(theirs)
    assert (a.config.threads, b.config.threads) == (1, 2)
    assert a.run_id != b.run_id
    repo_suite = REPO / "experiments" / "findings"
    for sw in load_sweeps(repo_suite, tmp_path / "out", None):
        direct = load_sweep(repo_suite / f"sweep_{sw.name}.yaml", out_dir=str(tmp_path / "out" / "sweeps"))
        assert [(r.run_id, r.config.threads) for r in expand(sw)] == \
            [(r.run_id, r.config.threads) for r in expand(direct)], sw.name
        assert all(r.config.threads == 1 for r in expand(direct)) and direct.profile.cpus_per_task == 1


def test_findings_local_runs_see_no_gpu_when_the_sweep_asks_for_none(monkeypatch):
    from rlhf_slurm.findings import job_env
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    cpu, gpu = job_env({"gpus": 0}), job_env({"gpus": 1})
    assert cpu["CUDA_VISIBLE_DEVICES"] == "" and gpu["CUDA_VISIBLE_DEVICES"] == "0"
    assert cpu["OMP_NUM_THREADS"] == gpu["OMP_NUM_THREADS"] == "1"
