"""`rlhf compare`: two claims tables row by row (analysis/compare.py).

The tables are written by the claims machinery's own writer (``write_claims``) from Rows
whose per-seed values are given, so the round trip through claims.csv and claims_seeds.csv
is the real one; every Δ and CI is checked against numbers worked out by hand.
"""

import math

import pandas as pd
import pytest


def _row(rid, per_seed, verdict="holds", kind="mean", claim=None):
    from rlhf_analysis.claims import Row
    from rlhf_analysis.results import t_ci
    mean, lo, hi, n = t_ci(list(per_seed.values()))
    return Row(claim=claim or rid[0], id=rid, statistic=f"stat {rid}", kind=kind, spec={}, value=mean, ci_low=lo,
               ci_high=hi, n=n, runs=f"n={n} of {n}", ci_method=f"t-interval, n={n}", verdict=verdict,
               per_seed=dict(per_seed))


def _fit(rid, value, verdict="holds"):
    from rlhf_analysis.claims import Row
    return Row(claim=rid[0], id=rid, statistic=f"R² {rid}", kind="overopt_fit", spec={}, value=value, n=5,
               verdict=verdict, ci_method="fit to the mean over 5 seeds (no CI)")


def _report(tmp_path, name, rows):
    from rlhf_analysis.claims import write_claims
    write_claims(rows, [], tmp_path / name / "tables")
    return tmp_path / name


def _pair(tmp_path):
    base = [_row("a", {0: 1.0, 1: 2.0, 2: 3.0}),
            _row("b", {0: 0.5, 1: 0.5, 2: 0.6}, verdict="holds"),
            _fit("d5", 0.92),
            _row("g", {0: 0.1, 1: 0.2}, verdict="reported"),
            _row("old", {0: 1.0, 1: 1.0})]
    new = [_row("a", {0: 1.5, 1: 2.0, 2: 3.7}),
           _row("b", {0: 0.2, 1: 0.4, 2: 0.3}, verdict="does not hold"),
           _fit("d5", 0.88, verdict="does not hold"),
           _row("g", {5: 0.3, 6: 0.5, 7: 0.7}, verdict="reported"),
           _row("added", {0: 2.0, 1: 2.0})]
    return _report(tmp_path, "base", base), _report(tmp_path, "new", new)


def test_welch_ci_by_hand():
    from rlhf_analysis.results import welch_ci
    # a = 1, 2, 3: mean 2, s² 1 -> s²/n 1/3; b = 2, 4, 6, 8: mean 5, s² 20/3 -> s²/n 5/3
    # Δ 3, se² 2, df = 4 / ((1/3)²/2 + (5/3)²/3) = 4 / (1/18 + 25/27) = 4.0754717
    d, lo, hi, df = welch_ci([1.0, 2.0, 3.0], [2.0, 4.0, 6.0, 8.0])
    assert d == pytest.approx(3.0) and df == pytest.approx(4 / (1 / 18 + 25 / 27))
    # t(0.975, 4.0755) = 2.756280 (tables interpolate between 2.776 at df 4 and 2.571 at df 5)
    assert lo == pytest.approx(3 - 2.756280 * math.sqrt(2), abs=1e-5)
    assert hi == pytest.approx(3 + 2.756280 * math.sqrt(2), abs=1e-5)
    assert math.isnan(welch_ci([1.0], [2.0, 3.0])[1]) and welch_ci([1.0], [2.0, 3.0])[0] == pytest.approx(1.5)
    assert welch_ci([1.0, 1.0], [2.0, 2.0, float("nan")]) == (1.0, 1.0, 1.0, math.inf)
    assert math.isnan(welch_ci([], [1.0, 2.0])[0])


def test_compare_pairs_by_seed_welch_otherwise_and_flags_verdicts(tmp_path):
    from rlhf_analysis import compare as K
    b, n = _pair(tmp_path)
    seeds = pd.read_csv(b / "tables" / "claims_seeds.csv")
    assert list(seeds.columns) == ["claim", "row", "seed", "value"]
    assert len(seeds) == 3 + 3 + 2 + 2  # the fit row has no per-seed values
    changes, only_base, only_new = K.compare(K.load_table(b), K.load_table(n))
    by = {c.row: c for c in changes}
    assert [c.row for c in changes] == ["a", "b", "d5", "g"] and only_base == ["old"] and only_new == ["added"]
    # a: differences 0.5, 0, 0.7 -> mean 0.4, sd 0.360555, t(0.975, 2) = 4.302653
    a = by["a"]
    assert a.delta == pytest.approx(0.4) and a.method == "paired t, n=3"
    half = 4.302653 * 0.3605551 / math.sqrt(3)
    assert (a.delta_ci_low, a.delta_ci_high) == (pytest.approx(0.4 - half, abs=1e-5), pytest.approx(0.4 + half, abs=1e-5))
    assert a.differs is False and not a.verdict_changed
    # b: differences -0.3, -0.1, -0.3 -> mean -0.2333, sd 0.11547 -> CI [-0.520, 0.0535]
    bb = by["b"]
    assert bb.delta == pytest.approx(-0.7 / 3)
    assert bb.delta_ci_high == pytest.approx(-0.7 / 3 + 4.302653 * 0.1154701 / math.sqrt(3), abs=1e-5)
    assert bb.differs is False and bb.verdict_changed
    # g: seeds 0, 1 against 5, 6, 7 -> Welch: Δ 0.5 − 0.15 = 0.35, se² 0.005/2 + 0.04/3
    g = by["g"]
    assert g.method == "Welch t, n=2+3" and g.delta == pytest.approx(0.35)
    se = math.sqrt(0.005 / 2 + 0.04 / 3)
    df = se ** 4 / ((0.005 / 2) ** 2 / 1 + (0.04 / 3) ** 2 / 2)
    from scipy import stats
    assert g.delta_ci_low == pytest.approx(0.35 - stats.t.ppf(0.975, df) * se)
    # d5: one number per report
    d5 = by["d5"]
    assert d5.delta == pytest.approx(-0.04) and math.isnan(d5.delta_ci_low) and d5.differs is None
    text = K.to_markdown(changes, K.load_table(b), K.load_table(n), only_base, only_new)
    assert "0 of 3 rows with a CI differ" in text and "about 0.2 would" in text  # 0.05 x 3
    assert "2 verdict(s) changed: b (holds → does not hold; Δ -0.233 [-0.52, 0.0535]: its statistic does not " \
           "detectably differ); d5 (holds → does not hold; Δ -0.04: no CI for its Δ)." in text
    assert "Only in the base report: old." in text and "Only in the new report: added." in text
    assert "| b | stat b | 0.533 [0.39, 0.677] | 0.3 [0.0516, 0.548] | -0.233 [-0.52, 0.0535] (paired t, n=3) | no | " \
           "holds → **does not hold** |" in text


def test_compare_a_statistic_that_moved_differs(tmp_path):
    from rlhf_analysis import compare as K
    b = _report(tmp_path, "b", [_row("x", {s: 0.5 + 0.01 * s for s in range(5)})])
    n = _report(tmp_path, "n", [_row("x", {s: 0.8 + 0.012 * s for s in range(5)})])
    (c,), _, _ = K.compare(K.load_table(b), K.load_table(n))
    assert c.differs is True and c.delta == pytest.approx(0.3 + 0.002 * 2)
    assert "1 of 1 rows with a CI differ (the 95% CI of Δ excludes 0): x" in \
        K.summary_lines([c], [], [])[0]


def test_compare_cli_writes_and_finds_report_under_a_findings_dir(tmp_path, capsys):
    from rlhf.cli import main
    b, n = _pair(tmp_path)
    findings = tmp_path / "findings_out"
    (findings / "report").mkdir(parents=True)
    n.rename(findings / "report" / "new")
    (findings / "report" / "new" / "tables").rename(findings / "report" / "tables")
    assert main(["compare", str(b), str(findings), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "| a | stat a |" in out and "written:" in out
    csv = pd.read_csv(tmp_path / "cmp" / "compare.csv")
    assert list(csv["row"]) == ["a", "b", "d5", "g"] and list(csv["verdict_changed"]) == [False, True, True, False]
    assert (tmp_path / "cmp" / "compare.md").read_text().startswith("# Claims compared")


def test_compare_bad_input_exits_2_and_names_the_file(tmp_path, capsys):
    from rlhf.cli import main
    b, n = _pair(tmp_path)
    seeds = n / "tables" / "claims_seeds.csv"

    def fails(args, words):
        assert main(["compare", *map(str, args)]) == 2
        err = capsys.readouterr().err
        assert words in err, err

    fails([tmp_path / "nowhere", n], "no tables/ here")
    text = seeds.read_text()
    seeds.unlink()
    fails([b, n], "claims_seeds.csv: not found (reports from before")
    seeds.write_text(text[: text.index("\n", len(text) // 2) + 4])  # torn mid-line
    fails([b, n], "claims_seeds.csv")
    seeds.write_text(text.replace("1.5", "1.6", 1))  # one value changed: its mean no longer the row's
    fails([b, n], "row 'a' has 3 seed values with mean 2.43333, but claims.csv says n=3, value 2.4")
    seeds.write_text(text + "z,zz,0,1.0\n")
    fails([b, n], "row 'zz' is not in claims.csv")
    seeds.write_text("")
    fails([b, n], "not a readable claims table")
    seeds.write_text(text.replace("1.5", "abc", 1))
    fails([b, n], "claims_seeds.csv, line 2: value 'abc' is not a number")
    seeds.write_text(text.replace("a,a,0,", "a,a,0.5,", 1))
    fails([b, n], "claims_seeds.csv, line 2: seed 0.5 is not a whole number")
    seeds.write_text(text)
    claims = (b / "tables" / "claims.csv").read_text()
    (b / "tables" / "claims.csv").write_text(claims.replace(",3,n=3 of 3,", ",three,n=3 of 3,", 1))
    fails([b, n, "--out", tmp_path / "cmp"], "claims.csv, line 2: n 'three' is not a number")
    (b / "tables" / "claims.csv").write_text("claim,row\na,a\n")
    fails([b, n, "--out", tmp_path / "cmp"], "missing column(s) statistic, value")
    assert not (tmp_path / "cmp").exists()  # refused before anything is written


def test_compare_pairs_the_seeds_both_have_and_ignores_rounding(tmp_path):
    from rlhf_analysis import compare as K
    e = 2.0 ** -45  # both differences exactly e: a zero-width CI that excludes 0
    b = _report(tmp_path, "b", [_row("x", {0: 1.0, 1: 2.0, 2: 4.0}), _row("y", {0: 0.5, 1: 0.25})])
    n = _report(tmp_path, "n", [_row("x", {0: 1.5, 1: 2.5}), _row("y", {0: 0.5 + e, 1: 0.25 + e})])
    x, y = K.compare(K.load_table(b), K.load_table(n))[0]
    assert x.method == "paired t, n=2 (the seeds both have)" and x.delta == pytest.approx(0.5)
    assert (x.delta_ci_low, x.delta_ci_high) == (pytest.approx(0.5), pytest.approx(0.5))  # both differences 0.5
    assert x.differs is True
    assert y.delta_ci_low == y.delta_ci_high == e and y.differs is False  # a rounding-size shift is no change


def test_compare_reads_every_kind_the_claims_machinery_writes(tmp_path):
    """Rows computed by claims_table (overopt, within_ci, mean with a seed whose value is
    missing, a fit, a monotone row; two claims with the same row id; row ids that look like
    numbers or NA) go through write_claims and load_table unchanged."""
    from rlhf_analysis.claims import Claim, claims_table, write_claims
    from rlhf_analysis.data import Data
    from rlhf_analysis import compare as K
    runs, recs = [], []
    for b in (0.0, 0.1, 1.0):
        for s in range(3):
            rid = f"b{b}s{s}"
            runs.append({"source": "x/sw", "run_id": rid, "state": "done", "seed": s, "ppo.beta": b,
                         "ppo.final_kl": 8.0 / (1 + 10 * b) + 0.1 * s,
                         "g": float("nan") if (b, s) == (0.0, 2) else 0.3 + 0.01 * s + b})
            if b == 0.0:
                for cp, k, gold, rm in (("sft", 0.0, 0.0, 0.0), ("ppo/kl_1", 1.0, 0.5 + 0.1 * s, 1.0),
                                        ("ppo", 9.0, 0.2, 3.0 + s)):
                    recs += [[rid, cp, "overopt", m, "rl", v, None, None]
                             for m, v in (("gold_reward", gold), ("rm_score", rm), ("kl", k))]
    data = Data(runs=pd.DataFrame(runs), records=pd.DataFrame(recs, columns=[
        "run_id", "checkpoint_label", "suite", "metric", "subset", "value", "delta_vs_ref", "error"]),
        curves=pd.DataFrame(columns=["run_id", "step"]), sources=["x/sw"])
    sw, b0 = {"sweep": "sw"}, {"sweep": "sw", "where": {"ppo.beta": 0}}
    claims = [Claim(id="p", name="p", text="", rows=[
        {"id": "01", "kind": "overopt", "quantity": "rm_rise", "x": b0, "verdict": ["ci_low > 0"]},
        {"id": "NA", "kind": "mean", "x": {**b0, "summary": "g"}, "verdict": ["ci_low > 0"]},
        {"id": "w", "kind": "within_ci", "x": {**sw, "where": {"ppo.beta": "min>0"}, "summary": "g"},
         "y": {**b0, "summary": "g"}, "verdict": ["within_ci"]},
        {"id": "fit", "kind": "overopt_fit", "method": "rl", "x": b0, "verdict": ["value >= 0.9"]},
        {"id": "mono", "kind": "monotone", "over": "ppo.beta", "x": {**sw, "summary": "ppo.final_kl"},
         "verdict": ["monotone"]}]),
        Claim(id="q", name="q", text="", rows=[{"id": "NA", "kind": "mean", "x": {**sw, "where": {"ppo.beta": 1},
                                                                                 "summary": "g"}}])]
    rows = claims_table(claims, data)
    assert {(r.claim, r.id): r.n for r in rows}[("p", "NA")] == 2  # seed 2's value is missing: not averaged in
    write_claims(rows, claims, tmp_path / "r" / "tables")
    t = K.load_table(tmp_path / "r")
    assert sorted(t.seeds) == [("p", "01"), ("p", "NA"), ("p", "w"), ("q", "NA")]
    # rm_rise: the RM score at ppo (3 + s) − at the gold peak, ppo/kl_1 (1.0)
    assert t.seeds[("p", "01")] == {0: 2.0, 1: 3.0, 2: 4.0} and sorted(t.seeds[("p", "NA")]) == [0, 1]
    changes, only_base, only_new = K.compare(t, t)
    assert [(c.claim, c.row) for c in changes] == [("p", "01"), ("p", "NA"), ("p", "w"), ("p", "fit"),
                                                   ("p", "mono"), ("q", "NA")]
    assert all(c.delta == 0 and not c.verdict_changed for c in changes) and not only_base and not only_new
    by = {(c.claim, c.row): c for c in changes}
    assert by[("p", "w")].method == "paired t, n=3; the CIs shown are the reference cell's"
    assert by[("p", "fit")].method == "no per-seed values in either report: no CI"
