"""`rlhf report` on a real 2x2 sweep (β x γ) of the TINY quickstart, evaluated with `rlhf eval`.

The sweep, its evals and the collected table are built once per session with the real tools
(`rlhf sweep --executor local`, `rlhf eval`, `rlhf sweep collect`); two more run directories
are copies marked diverged (PPO unfinished) and running (no PPO yet), as the pipeline leaves
them, to check that runs which are not done are shown and never averaged in.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, TINY, rlhf_cmd

os.environ.setdefault("MPLBACKEND", "Agg")

FIGURES = ("ablation", "overoptimization", "training_curves", "alignment_tax", "reward_model")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVAL_SETTINGS = ["tox_k=2", "tox_n_prompts=4", "tox_max_new_tokens=8", "bootstrap=50", "bon_max_n=4",
                 "overopt_n_prompts=8", "overopt_samples=2", "overopt_max_new_tokens=8", "mc_limit=20",
                 "ppl_max_tokens=2000"]


def _env():
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(args, cwd, timeout=600):
    return subprocess.run(rlhf_cmd() + args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def sweep(tmp_path_factory):
    """A collected 2x2 sweep of the TINY quickstart with eval records, plus a diverged and a
    running run; returns the sweep directory."""
    cache = os.environ.get("RLHF_TEST_ANALYSIS_CACHE")  # a folder to keep the sweep in between sessions
    if cache and (Path(cache) / "sweeps" / "tiny2x2" / "results.parquet").is_file():
        return Path(cache) / "sweeps" / "tiny2x2"
    root = Path(cache) if cache else tmp_path_factory.mktemp("analysis")
    root.mkdir(parents=True, exist_ok=True)
    spec = {"name": "tiny2x2", "out_dir": str(root / "sweeps"),
            "base": {"config": str(REPO / "experiments" / "quickstart.yaml"), "overrides": list(TINY)},
            "grid": {"ppo.beta": [0.02, 0.1], "ppo.ptx_coef": [0.0, 1.0]}, "seeds": [0]}
    (root / "tiny2x2.yaml").write_text(yaml.safe_dump(spec))
    r = _run(["sweep", str(root / "tiny2x2.yaml"), "--executor", "local"], root)
    assert r.returncode == 0, r.stdout + r.stderr
    sdir = root / "sweeps" / "tiny2x2"
    runs = sorted(p for p in (sdir / "runs").iterdir() if p.is_dir())
    assert len(runs) == 4
    # rlhf eval on every run, two at a time (2 cores)
    procs = []
    for run in runs:
        cmd = rlhf_cmd() + ["eval", str(run), "--quiet", "--suite", "truthfulqa,toxicity,regression,overopt"]
        cmd += [a for s in EVAL_SETTINGS for a in ("--set", s)]
        procs.append(subprocess.Popen(cmd, cwd=root, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
        if len(procs) % 2 == 0:
            for p in procs[-2:]:
                p.communicate(timeout=600)
    for p in procs:
        p.communicate(timeout=600)
    for run in runs:  # a failed metric is a record with 'error': the other metrics must be there
        recs = [json.loads(x) for x in (run / "eval" / "records.jsonl").read_text().splitlines()]
        got = {(x["suite"], x["metric"]) for x in recs if not x.get("error")}
        assert {("truthfulqa", "mc1"), ("toxicity", "expected_max_toxicity"), ("regression", "lm_loss"),
                ("overopt", "gold_reward")} <= got, (run, got)
    # runs that are not done, as the pipeline leaves them
    div = sdir / "runs" / "beta=0.1,ptx_coef=1,seed=1-diverged"
    shutil.copytree(runs[-1], div)
    shutil.rmtree(div / "eval")
    (div / "ppo" / "DONE").unlink()
    (div / "ppo" / "summary.json").unlink()
    rows = (div / "ppo" / "metrics.jsonl").read_text().splitlines()
    (div / "ppo" / "metrics.jsonl").write_text("\n".join(rows[:3]) + "\n")
    shutil.move(div / "ppo", div / "ppo.tmp")
    (div / "status.json").write_text(json.dumps({"state": "diverged", "stage": "ppo", "step": 2,
                                                 "error": "non-finite ppo loss at step 3: nan"}))
    run_ = sdir / "runs" / "beta=0.02,ptx_coef=0,seed=1-running"
    shutil.copytree(runs[0], run_, ignore=shutil.ignore_patterns("ppo", "eval"))
    (run_ / "status.json").write_text(json.dumps({"state": "running", "stage": "ppo", "step": 0}))
    r = _run(["sweep", "collect", str(sdir), "--all"], root)
    assert r.returncode == 0, r.stdout + r.stderr
    return sdir


@pytest.fixture(scope="session")
def report_cli(sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("report_cli")
    r = _run(["report", str(sweep), "--out", str(out)], sweep.parent)
    assert r.returncode == 0, r.stdout + r.stderr
    return out


@pytest.fixture(scope="session")
def report_obj(sweep, tmp_path_factory):
    """The report built in-process, Figures kept open to read their plotted data back."""
    from rlhf_analysis.report import build_report
    from rlhf_analysis.style import paper_style
    with paper_style():
        rep = build_report([sweep], tmp_path_factory.mktemp("report_obj"), keep_figures=True)
    yield rep
    import matplotlib.pyplot as plt
    plt.close("all")


# ------------------------------------------------------------------ files
def test_report_writes_every_figure_and_table(report_cli):
    import matplotlib.image as mpimg
    for name in FIGURES:
        pdf, png, csv = (report_cli / "figures" / f"{name}.{e}" for e in ("pdf", "png", "csv"))
        assert pdf.read_bytes()[:5] == b"%PDF-" and b"%%EOF" in pdf.read_bytes()[-32:], name
        assert b"/Type3" not in pdf.read_bytes(), f"{name}.pdf has Type 3 fonts"
        assert png.read_bytes()[:8] == PNG_MAGIC, name
        img = mpimg.imread(png)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100, name
        # made at the printed width (3.25 in column or 6.75 in page) at 150 dpi
        assert int(img.shape[1]) in (int(3.25 * 150), int(6.75 * 150)), (name, img.shape)
        assert len(pd.read_csv(csv)) > 0, f"{name}.csv is empty: the figure has no data"
    tex = (report_cli / "tables" / "main_results.tex").read_text()
    for cmd in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}", r"$\beta$", r"$\gamma$"):
        assert cmd in tex
    assert "±" not in tex and "β" not in tex  # LaTeX-safe
    main = pd.read_csv(report_cli / "tables" / "main_results.csv")
    assert len(main) == 4 and {"ppo.beta", "ppo.ptx_coef", "runs", "gold_reward", "gold_reward_ci_low"} <= set(main)
    md = (report_cli / "report.md").read_text()
    for name in FIGURES:
        assert f"(figures/{name}.png)" in md and f"figures/{name}.pdf" in md
    assert md.count("*Figure ") == len(FIGURES)
    assert "<img src='figures/ablation.png'" in (report_cli / "report.html").read_text()


# ------------------------------------------------------------------ values
def _mean_lines(ax):
    return {ln.get_gid(): ln for ln in ax.get_lines() if (ln.get_gid() or "").startswith("mean:")}


def test_ablation_plots_the_mean_over_seeds_of_the_runs(report_obj, report_cli):
    """The points drawn in the ablation panels (and their CSV) are the mean over the done
    runs of each cell, computed here from the per-run table with a plain groupby rather than
    rlhf_analysis.results.aggregate, which draws them; the main table's means are the same."""
    table = pd.read_csv(report_cli / "tables" / "main_results.csv")
    runs = pd.read_csv(report_cli / "tables" / "runs.csv")
    done = runs[runs["state"] == "done"]
    fig = report_obj.open_figures["ablation"]
    data = pd.read_csv(report_obj.figures["ablation"]["csv"])
    metrics = list(dict.fromkeys(data["metric"]))
    assert {"gold_reward", "rm_score", "kl", "mc1", "mc2", "expected_max_toxicity", "toxicity_probability",
            "lm_loss_delta", "stereotype_bias"} <= set(metrics)
    axes = np.array(fig.axes).reshape(len(metrics), 2)
    sym = {"ppo.beta": "β", "ppo.ptx_coef": "γ"}
    n_finite = 0
    for j, (sw, hue) in enumerate((("ppo.beta", "ppo.ptx_coef"), ("ppo.ptx_coef", "ppo.beta"))):
        assert axes[-1][j].get_xlabel().startswith(sym[sw])
        for i, m in enumerate(metrics):
            lines = _mean_lines(axes[i][j])
            for hv in sorted(table[hue].unique()):
                t = table[table[hue] == hv].sort_values(sw)
                by_hand = [done[(done[hue] == hv) & (done[sw] == x)][m].mean() for x in t[sw]]
                ln = lines[f"mean:{sym[hue]} = {hv:g}"]
                np.testing.assert_allclose(ln.get_ydata(), by_hand, rtol=1e-9, equal_nan=True, err_msg=f"{m} {sw}")
                d = data[(data["metric"] == m) & (data["switch"] == sw) & (data["hue_value"].astype(float) == hv)]
                np.testing.assert_allclose(d["mean"], by_hand, rtol=1e-9, equal_nan=True)
                np.testing.assert_allclose(t[m], by_hand, rtol=1e-9, equal_nan=True)
                n_finite += int(np.isfinite(by_hand).sum())
    assert n_finite >= len(metrics) * 2, "the comparison must not be NaN against NaN"


def test_table_equals_runs_and_records(report_cli, sweep):
    """The table's numbers are the collected results' and the eval records' numbers."""
    res = pd.read_parquet(sweep / "results.parquet")
    runs = pd.read_csv(report_cli / "tables" / "runs.csv")
    main = pd.read_csv(report_cli / "tables" / "main_results.csv")
    done = res[res["state"] == "done"]
    for _, r in done.iterrows():
        row = runs[runs["run_id"] == r["run_id"]].iloc[0]
        assert row["gold_reward"] == pytest.approx(r["ppo.final_gold_reward"])
        assert row["kl"] == pytest.approx(r["ppo.final_kl"])
        recs = [json.loads(x) for x in (sweep / "runs" / r["run_id"] / "eval" / "records.jsonl").read_text().splitlines()]
        mc1 = [x["value"] for x in recs if x["checkpoint_label"] == "ppo" and x["metric"] == "mc1" and not x.get("error")]
        assert row["mc1"] == pytest.approx(mc1[-1])
        tax = [x["delta_vs_ref"] for x in recs if x["checkpoint_label"] == "ppo" and x["metric"] == "lm_loss"]
        assert row["lm_loss_delta"] == pytest.approx(tax[-1])
        cell = main[(main["ppo.beta"] == r["ppo.beta"]) & (main["ppo.ptx_coef"] == r["ppo.ptx_coef"])].iloc[0]
        assert cell["gold_reward"] == pytest.approx(r["ppo.final_gold_reward"])  # the done run is the cell's only one


def test_other_figures_plot_their_csv(report_obj):
    from rlhf_analysis.figures import fit_curve
    # training curves: the smoothed line of each run is the CSV's, the raw values the run's metrics.jsonl
    fig = report_obj.open_figures["training_curves"]
    data = pd.read_csv(report_obj.figures["training_curves"]["csv"])
    ax = fig.axes[0]
    assert ax.get_ylabel().startswith("ppo_reward")
    for ln in ax.get_lines():
        gid = ln.get_gid() or ""
        if gid.startswith("smoothed:"):
            d = data[(data["run_id"] == gid.split(":", 1)[1]) & (data["metric"] == "ppo_reward")]
            np.testing.assert_allclose(ln.get_ydata(), d["smoothed"])
    ppo = report_obj.data.curves
    rid = report_obj.per_run["run_id"].iloc[0]
    d = data[(data["run_id"] == rid) & (data["metric"] == "kl")]
    np.testing.assert_allclose(d["value"], ppo[ppo["run_id"] == rid]["kl"])
    # alignment tax: bar heights are the CSV means, which are the mean of the runs' deltas
    fig = report_obj.open_figures["alignment_tax"]
    data = pd.read_csv(report_obj.figures["alignment_tax"]["csv"])
    per_run = report_obj.per_run
    from rlhf_analysis.figures import REGRESSION_LABELS
    label_metric = {v: k for k, v in REGRESSION_LABELS.items()}
    recs = report_obj.data.records
    bias = recs[(recs["metric"] == "stereotype_bias") & (recs["subset"] == "rl")]
    bias = bias.pivot_table(index="run_id", columns="checkpoint_label", values="value", aggfunc="last")
    panels = set()
    for ax in fig.axes:
        metric = label_metric.get(ax.get_ylabel(), ax.get_ylabel()[2:])
        panels.add(metric)
        for patch in ax.patches:
            g = patch.get_gid().split(":", 1)[1]
            row = data[(data["metric"] == metric) & (data["gamma"].astype(str) == g)].iloc[0]
            assert patch.get_height() == pytest.approx(row["mean"])
            sel = per_run[(per_run["state"] == "done") & (per_run["ppo.ptx_coef"] == float(g))]
            if metric == "lm_loss":
                assert row["mean"] == pytest.approx(sel["lm_loss_delta"].mean())
            if metric == "stereotype_bias":  # beside the tax: Δ bias (PPO − SFT) from the eval records
                d = (bias["ppo"] - bias["sft"]).reindex(sel["run_id"]).dropna()
                assert len(d) and row["mean"] == pytest.approx(d.mean())
    assert {"lm_loss", "stereotype_bias"} <= panels
    # over-optimisation: fitted curves follow the eval records' coefficients
    fig = report_obj.open_figures["overoptimization"]
    data = pd.read_csv(report_obj.figures["overoptimization"]["csv"])
    assert (data["kind"] == "point").any() and {"bon", "rl"} <= set(data["method"])
    fits = data[data["kind"] == "fit"]
    assert len(fits), "no fitted curve"
    for (which, method, grp), f in fits.groupby(["reward", "method", "group"]):
        np.testing.assert_allclose(f["gain"], fit_curve(method, f["alpha"].iloc[0], f["beta"].iloc[0], f["d"]))
    bon = fits[(fits["method"] == "bon") & (fits["reward"] == "gold_reward")]
    recs = report_obj.data.records
    a = recs[(recs["metric"] == "fit_gold_reward") & (recs["subset"] == "bon")]
    a = a[a["run_id"].isin(report_obj.per_run.query("state == 'done'")["run_id"])]
    assert bon["alpha"].iloc[0] == pytest.approx(a["alpha"].mean())
    for ax in fig.axes:
        for ln in ax.get_lines():
            gid = ln.get_gid() or ""
            if gid.startswith("fit:"):
                _, method, grp = gid.split(":")
                which = "gold_reward" if "gold_reward" in ax.get_ylabel() else "rm_score"
                f = data[(data["kind"] == "fit") & (data["reward"] == which) & (data["method"] == method)
                         & (data["group"].astype(str) == grp if method == "rl" else True)]
                np.testing.assert_allclose(ln.get_ydata(), f["gain"])
    # reward model: the plotted accuracy is the mean of the runs' held-out accuracy
    data = pd.read_csv(report_obj.figures["reward_model"]["csv"])
    acc = data[(data["x"] == "rm.k") & (data["metric"] == "rm.heldout_accuracy")]
    assert acc["mean"].iloc[0] == pytest.approx(report_obj.data.runs["rm.heldout_accuracy"].dropna().unique().mean())


# ------------------------------------------------------------------ bad runs, bad input
def test_runs_not_done_are_marked_not_dropped(report_cli, report_obj):
    runs = pd.read_csv(report_cli / "tables" / "runs.csv")
    states = dict(zip(runs["run_id"], runs["state"]))
    assert states["beta=0.1,ptx_coef=1,seed=1-diverged"] == "diverged"
    assert states["beta=0.02,ptx_coef=0,seed=1-running"] == "running"
    main = pd.read_csv(report_cli / "tables" / "main_results.csv")
    cell = main[(main["ppo.beta"] == 0.1) & (main["ppo.ptx_coef"] == 1.0)].iloc[0]
    assert cell["runs"] == "1/2 done; 1 diverged" and cell["gold_reward_n"] == 1
    assert "1 running" in main[(main["ppo.beta"] == 0.02) & (main["ppo.ptx_coef"] == 0.0)].iloc[0]["runs"]
    tex = (report_cli / "tables" / "main_results.tex").read_text()
    assert "1 diverged" in tex and "1 running" in tex
    md = (report_cli / "report.md").read_text()
    assert "seed=1-diverged` | diverged | non-finite ppo loss" in md and "seed=1-running` | running" in md
    for name in ("ablation", "training_curves", "alignment_tax"):
        gids = {ln.get_gid() for ax in report_obj.open_figures[name].axes for ln in ax.get_lines()}
        assert "incomplete:diverged" in gids, name
    gids = {ln.get_gid() for ax in report_obj.open_figures["ablation"].axes for ln in ax.get_lines()}
    assert "incomplete:running" in gids
    legend_texts = {t.get_text() for ax in report_obj.open_figures["ablation"].axes if ax.get_legend()
                    for t in ax.get_legend().get_texts()}
    assert "run diverged (not in mean)" in legend_texts


def test_bad_input_exits_2(tmp_path, capsys):
    from rlhf.cli import main
    empty = tmp_path / "empty"
    empty.mkdir()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("hello")
    uncollected = tmp_path / "uncollected"
    uncollected.mkdir()
    (uncollected / "manifest.json").write_text('{"runs": []}')
    for path, words in ((empty, "is empty"), (foreign, "is not a sweep directory"),
                        (uncollected, "rlhf sweep collect"), (tmp_path / "missing", "does not exist"),
                        (foreign / "notes.txt", "not a results table")):
        assert main(["report", str(path), "--out", str(tmp_path / "out")]) == 2
        assert words in capsys.readouterr().err
    from rlhf_analysis.data import ForeignDirectoryError, NoResultsError, load
    with pytest.raises(NoResultsError):
        load([empty])
    with pytest.raises(ForeignDirectoryError):
        load([foreign])
    rows = pd.DataFrame({"run_id": [], "state": []})
    rows.to_csv(tmp_path / "results.csv", index=False)
    with pytest.raises(NoResultsError):
        load([tmp_path / "results.csv"])


def test_a_bad_claims_file_leaves_no_half_report(sweep, tmp_path, capsys):
    """The claims are read and computed before any figure or table is written."""
    from rlhf.cli import main
    other = tmp_path / "other.yaml"  # a valid file about a sweep that is not among the inputs
    other.write_text(yaml.safe_dump({"claims": [{"id": "a", "rows": [
        {"id": "a1", "kind": "mean", "x": {"sweep": "beta", "summary": "ppo.final_kl"}}]}]}))
    for claims, words in ((tmp_path / "missing.yaml", "claims file not found"),
                          (other, "claim a, row a1: sweep 'beta' is not among the report's inputs")):
        out = tmp_path / "out"
        assert main(["report", str(sweep), "--out", str(out), "--claims", str(claims)]) == 2
        assert words in capsys.readouterr().err
        assert not out.exists()


# ------------------------------------------------------------------ style
def test_figures_are_paper_ready(report_obj):
    from rlhf_analysis.style import overlapping_texts, texts_outside
    for name, fig in report_obj.open_figures.items():
        w = fig.get_size_inches()[0]
        assert w in (3.25, 6.75), (name, w)
        assert overlapping_texts(fig) == [], name
        assert texts_outside(fig) == [], name
        rows_labelled: dict = {}
        for ax in fig.axes:
            if ax.get_visible() and ax.has_data():
                row = ax.get_subplotspec().rowspan.start  # a y label per row of panels (shared along it)
                rows_labelled[row] = rows_labelled.get(row, False) or bool(ax.get_ylabel())
                for t in ax.get_xticklabels() + ax.get_yticklabels():
                    assert t.get_fontsize() >= 7
        assert all(rows_labelled.values()), f"{name}: a row of panels without a y label"
        assert any(ax.get_xlabel() for ax in fig.axes), name
        # legends outside the axes: no legend box overlaps a plotting area
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        legends = [lg for lg in [fig.legends and fig.legends[0]] if lg] + [ax.get_legend() for ax in fig.axes
                                                                            if ax.get_legend()]
        for lg in legends:
            lb = lg.get_window_extent(r)
            for ax in fig.axes:
                if ax.get_visible():
                    assert not lb.overlaps(ax.get_window_extent(r)), f"{name}: a legend covers an axes"
    labels = " ".join(ax.get_xlabel() for ax in report_obj.open_figures["overoptimization"].axes)
    assert r"\sqrt{\mathrm{KL}}" in labels


def test_t_ci():
    from rlhf_analysis.results import aggregate, state_summary, t_ci
    m, lo, hi, n = t_ci([1.0, 2.0, 3.0])
    assert (m, n) == (2.0, 3) and hi - m == pytest.approx(4.302652729911275 * 1.0 / np.sqrt(3))
    assert np.isnan(t_ci([1.0])[1]) and t_ci([])[3] == 0 and t_ci([1.0, float("nan")])[3] == 1
    assert state_summary(["done", "failed", "done", "running"]) == "2/4 done; 1 failed, 1 running"
    df = pd.DataFrame({"run_id": list("abc"), "state": ["done", "done", "failed"], "ppo.beta": [0.1, 0.1, 0.1],
                       "gold_reward": [1.0, 3.0, 100.0]})
    agg = aggregate(df, ["ppo.beta"], ["gold_reward"])
    assert agg["gold_reward"].iloc[0] == 2.0 and agg["runs"].iloc[0] == "2/3 done; 1 failed"


def test_report_without_bias_records(sweep, tmp_path):
    """Runs made before the toy world's bias probe (no stereotype_bias record, no held-out
    bias in the PPO summary): the report is built, without a bias panel."""
    old = tmp_path / sweep.name
    shutil.copytree(sweep, old, ignore=shutil.ignore_patterns("*.safetensors", "*.pt", "*.bin", "samples"))
    for rec in old.glob("runs/*/eval/records.jsonl"):
        rec.write_text("".join(x + "\n" for x in rec.read_text().splitlines() if "stereotype_bias" not in x))
    table = pd.read_parquet(old / "results.parquet")
    table.drop(columns=[c for c in table.columns if "stereotype" in c]).to_parquet(old / "results.parquet")
    from rlhf_analysis.report import build_report
    rep = build_report([old], tmp_path / "report")
    for name in ("ablation", "alignment_tax"):
        data = pd.read_csv(rep.figures[name]["csv"])
        assert len(data) and "stereotype_bias" not in set(data["metric"])


def test_keys_that_change_no_result_are_not_conditions():
    """Runs that differ only in the seed or in keys that change no result (threads, the
    critic thread, gradient checkpointing, ...) are one condition, not several."""
    import pandas as pd
    from analysis.data import varying_keys
    from rlhf.config import NO_RESULT_KEYS
    runs = pd.DataFrame({"seed": [0, 1, 2], "threads": [1, 2, 1], "ppo.parallel_critic": [False, True, True],
                         "model.gradient_checkpointing": [False, True, False], "ppo.beta": [0.1, 0.1, 0.2]})
    assert "ppo.parallel_critic" in NO_RESULT_KEYS
    assert varying_keys(runs) == ["ppo.beta"]
