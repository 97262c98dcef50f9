"""The report's figures. Each ``*_figure`` function returns ``(fig, data)``: the matplotlib
Figure (not yet saved) and the tidy DataFrame of exactly the values it plots (written next
to the figure as CSV). Runs that are not done are drawn as markers (see ``style.INCOMPLETE``)
and named in the legend; they are never averaged in, and never silently dropped."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import pandas as pd

from .data import DONE, SWITCHES, Data, fmt_value, latest_records, sort_key
from .results import METRIC, METRICS, aggregate, run_metrics
from .style import COLUMN_IN, INCOMPLETE, INCOMPLETE_COLOR, PAGE_IN, new_figure, palette

SQRT_KL = r"$\sqrt{\mathrm{KL}}$ (nats$^{1/2}$)"


def legend_entries(axes) -> tuple[list, list]:
    """The legend handles and labels of ``axes``, each label once, in first-seen order."""
    handles, labels = [], []
    for ax in axes:
        for hd, lb in zip(*ax.get_legend_handles_labels()):
            if lb not in labels:
                handles.append(hd)
                labels.append(lb)
    return handles, labels

def symbol(key: str) -> str:
    return SWITCHES[key][0] if key in SWITCHES else key


def axis_label(key: str) -> str:
    if key in SWITCHES:
        sym, meaning = SWITCHES[key]
        return f"{sym} ({meaning})"
    return key


def _none(v):
    return "none" if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _positions(values) -> dict:
    """Categorical x positions of switch values, in numeric order ('none' last)."""
    uniq = sorted({_none(v) for v in values}, key=sort_key)
    return {v: i for i, v in enumerate(uniq)}


def _mark_incomplete(ax, xs: list[float], states: list[str], seen: set) -> None:
    """A marker per unfinished run at the bottom of the axes (x in data, y in axes units)."""
    import matplotlib.transforms as mtransforms
    trans = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
    for x, st in zip(xs, states):
        label = f"run {st} (not in mean)"
        ax.plot([x], [0.04], marker=INCOMPLETE.get(st, "X"), color=INCOMPLETE_COLOR, linestyle="none",
                transform=trans, clip_on=False, zorder=5, markersize=5,
                label=label if label not in seen else "_nolegend_", gid=f"incomplete:{st}")
        seen.add(label)


def _errorbar(ax, x, mean, lo, hi, **kw):
    mean = np.asarray(mean, float)
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    yerr = np.vstack([np.where(np.isnan(lo), 0, mean - lo), np.where(np.isnan(hi), 0, hi - mean)])
    return ax.errorbar(x, mean, yerr=yerr, **kw)


# ------------------------------------------------------------------ ablation panels
def ablation_figure(data: Data, per_run: Optional[pd.DataFrame] = None, metrics: Optional[list[str]] = None):
    """Rows: metrics; columns: the switches that vary (β, γ, K, ε). In the column of one
    switch, one line per value of the next varying condition (averaged over any others);
    points: mean over seeds, bars: 95% CI over seeds."""
    per_run = run_metrics(data) if per_run is None else per_run
    metrics = metrics or [m.name for m in METRICS if per_run[m.name].notna().any()] or [METRICS[0].name]
    conds = data.conditions
    cols = data.switches or conds[:2] or [None]
    nrow, ncol = len(metrics), len(cols)
    width = PAGE_IN if ncol > 1 else COLUMN_IN
    fig, axes = new_figure(width, 0.55 + 1.2 * nrow, nrow, ncol, sharex="col")
    rows = []
    pal = palette(10)
    for j, sw in enumerate(cols):
        others = [c for c in conds if c != sw]
        hue = others[0] if others else None
        by = [k for k in (sw, hue) if k]
        agg = aggregate(per_run, by, metrics) if by else aggregate(per_run, [], metrics)
        xpos = _positions(per_run[sw]) if sw else {"all": 0}
        hues = sorted({_none(v) for v in agg[hue]}, key=sort_key) if hue else [None]
        offs = {h: (i - (len(hues) - 1) / 2) * 0.08 for i, h in enumerate(hues)}
        for i, m in enumerate(metrics):
            ax = axes[i][j]
            seen: set = set()
            for hi_, h in enumerate(hues):
                g = agg if h is None else agg[agg[hue].map(_none) == h]
                g = g.iloc[sorted(range(len(g)), key=lambda r: sort_key(g.iloc[r][sw]) if sw else 0)]
                xs = [xpos[_none(v)] + offs[h] for v in g[sw]] if sw else [0.0] * len(g)
                label = f"{symbol(hue)} = {fmt_value(h)}" if hue else "mean"
                _errorbar(ax, xs, g[m], g[f"{m}_ci_low"], g[f"{m}_ci_high"], color=pal[hi_ % len(pal)],
                          marker="o", label=label if i == 0 else "_nolegend_", gid=f"mean:{label}")
                for (_, r), x in zip(g.iterrows(), xs):
                    rows.append({"metric": m, "switch": sw or "", "x": fmt_value(r[sw]) if sw else "all",
                                 "hue": hue or "", "hue_value": fmt_value(h) if hue else "",
                                 "mean": r[m], "ci_low": r[f"{m}_ci_low"], "ci_high": r[f"{m}_ci_high"],
                                 "n": r[f"{m}_n"], "runs": r["runs"], "x_pos": x})
            bad = per_run[per_run["state"] != DONE]
            if len(bad):
                bx = [xpos[_none(v)] for v in bad[sw]] if sw else [0] * len(bad)
                _mark_incomplete(ax, bx, list(bad["state"]), seen)
            ax.set_xticks(list(xpos.values()), [fmt_value(v) for v in xpos])
            ax.set_xlim(-0.5, len(xpos) - 0.5)
            if j == 0:
                ax.set_ylabel(METRIC[m].label if m in METRIC else m)
            if i == nrow - 1:
                ax.set_xlabel(axis_label(sw) if sw else "all runs")
            ax.margins(y=0.15)
        handles, labels = axes[0][j].get_legend_handles_labels()
        for i in range(nrow):  # incomplete-run markers of any row
            for hd, lb in zip(*axes[i][j].get_legend_handles_labels()):
                if lb not in labels:
                    handles.append(hd)
                    labels.append(lb)
        order = sorted(range(len(labels)), key=lambda k: labels[k].startswith("run "))  # data first
        handles, labels = [handles[k] for k in order], [labels[k] for k in order]
        if handles:
            axes[0][j].legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.02), ncol=min(2, len(labels)),
                              borderaxespad=0.2, handletextpad=0.3, columnspacing=1.0)
    return fig, pd.DataFrame(rows)


# ------------------------------------------------------------------ over-optimisation
def _group_key(data: Data) -> Optional[str]:
    conds = data.conditions
    for k in ("ppo.beta", "rm.n_prompts", "rm.k"):
        if k in conds:
            return k
    return conds[0] if conds else None


def overopt_points(data: Data) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(points, fits): gain of gold_reward and rm_score over the SFT policy against
    d = sqrt(KL), for RL checkpoints (over SFT's own RL point, KL 0; older records without
    one: over best-of-1) and best-of-n (over best-of-1), per run; the fitted coefficients."""
    recs = latest_records(data.records)
    if recs.empty:
        return pd.DataFrame(), pd.DataFrame()
    oo = recs[recs["suite"] == "overopt"]
    if oo.empty or "method" not in oo.columns:
        return pd.DataFrame(), pd.DataFrame()
    state = dict(zip(data.runs["run_id"], data.runs["state"]))
    pts, fits = [], []
    for run_id, g in oo.groupby("run_id", sort=False):
        for which in ("gold_reward", "rm_score"):
            r = g[g["metric"] == which]
            base = r[(r["method"] == "bon") & (r.get("bon_n", pd.Series(dtype=float)) == 1)]["value"]
            if base.empty:
                continue
            base = float(base.iloc[0])
            sft_rl = r[(r["method"] == "rl") & (r["checkpoint_label"] == "sft")]["value"]
            base_rl = float(sft_rl.iloc[-1]) if len(sft_rl) else base
            for _, p in r.iterrows():
                kl = float(p["kl"]) if pd.notna(p.get("kl")) else math.nan
                d = float(p["d"]) if "d" in p and pd.notna(p.get("d")) else math.sqrt(max(kl, 0.0))
                pts.append({"run_id": run_id, "state": state.get(run_id, ""), "reward": which,
                            "method": p["method"], "checkpoint": p["checkpoint_label"],
                            "bon_n": p.get("bon_n"), "kl": kl, "d": d, "value": float(p["value"]),
                            "gain": float(p["value"]) - (base_rl if p["method"] == "rl" else base)})
            if (r["method"] == "rl").any() and sft_rl.empty:  # the SFT policy is the RL curve's origin
                pts.append({"run_id": run_id, "state": state.get(run_id, ""), "reward": which, "method": "rl",
                            "checkpoint": "sft", "bon_n": None, "kl": 0.0, "d": 0.0, "value": base, "gain": 0.0})
            f = g[g["metric"] == f"fit_{which}"]
            for _, fr in f.iterrows():
                fits.append({"run_id": run_id, "state": state.get(run_id, ""), "reward": which,
                             "method": fr.get("method", fr["subset"]), "alpha": fr.get("alpha"),
                             "beta": fr.get("beta"), "r2": fr.get("r2")})
    return pd.DataFrame(pts), pd.DataFrame(fits)


def fit_curve(method: str, alpha: float, beta: float, d: np.ndarray) -> np.ndarray:
    """Gao et al.: R_bon(d) = d(α - β d), R_RL(d) = d(α - β log d) (0 at d = 0)."""
    d = np.asarray(d, float)
    if method == "bon":
        return d * (alpha - beta * d)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = d * (alpha - beta * np.log(d))
    return np.where(d > 0, out, 0.0)


def overopt_figure(data: Data):
    """gold_reward and rm_score gain over SFT against sqrt(KL): RL (one line per β, or per
    reward-model data size) and best-of-n, points and fitted curves."""
    pts, fits = overopt_points(data)
    fig, axes = new_figure(PAGE_IN, 2.7, 1, 2)
    rows = []
    key = _group_key(data)
    group_of = dict(zip(data.runs["run_id"], data.runs[key].map(_none))) if key else {}
    groups = sorted({group_of.get(r, "all") for r in data.runs["run_id"]}, key=sort_key) if key else ["all"]
    pal = palette(len(groups) + 1)
    for ax, which in zip(axes[0], ("gold_reward", "rm_score")):
        seen: set = set()
        p = pts[pts["reward"] == which] if len(pts) else pts
        f = fits[fits["reward"] == which] if len(fits) else fits
        series = [("bon", "all", "best-of-n", "black", "s", "--")] + \
                 [("rl", g, f"RL, {symbol(key)} = {fmt_value(g)}" if key else "RL", pal[i], "o", "-")
                  for i, g in enumerate(groups)]
        for method, grp, label, color, marker, ls in series:
            sel = p[p["method"] == method] if len(p) else p
            fsel = f[f["method"] == method] if len(f) else f
            if method == "rl" and key and len(sel):
                sel = sel[sel["run_id"].map(group_of) == grp]
                fsel = fsel[fsel["run_id"].map(group_of) == grp] if len(fsel) else fsel
            if not len(sel):
                continue
            done = sel[sel["state"] == DONE]
            if method == "bon":  # best-of-n from SFT: mean over runs at each n
                agg = done.groupby("bon_n", as_index=False).agg(d=("d", "mean"), gain=("gain", "mean"))
            else:
                agg = done[["d", "gain", "checkpoint", "run_id"]]
            ax.plot(agg["d"], agg["gain"], marker=marker, linestyle="none", color=color, alpha=0.85,
                    markersize=3.5, label=label, gid=f"points:{method}:{grp}")
            for _, r in agg.iterrows():
                rows.append({"reward": which, "kind": "point", "method": method, "group": fmt_value(grp),
                             "run_id": r.get("run_id", ""), "checkpoint": r.get("checkpoint", ""),
                             "bon_n": r.get("bon_n", ""), "d": r["d"], "gain": r["gain"]})
            fdone = fsel[fsel["state"] == DONE] if len(fsel) else fsel
            a = pd.to_numeric(fdone["alpha"], errors="coerce").mean() if len(fdone) else math.nan
            b = pd.to_numeric(fdone["beta"], errors="coerce").mean() if len(fdone) else math.nan
            if np.isfinite(a) and np.isfinite(b):  # drawn over the range of its own points only
                grid = np.linspace(0, max(float(agg["d"].max()), 1e-6) * 1.05, 60)
                y = fit_curve(method, a, b, grid)
                ax.plot(grid, y, color=color, linestyle=ls, linewidth=1.0, label="_nolegend_",
                        gid=f"fit:{method}:{grp}")
                for d, v in zip(grid, y):
                    rows.append({"reward": which, "kind": "fit", "method": method, "group": fmt_value(grp),
                                 "alpha": a, "beta": b, "d": d, "gain": v})
            bad = sel[sel["state"] != DONE]
            if len(bad):
                for st, bb in bad.groupby("state"):
                    lab = f"run {st} (not fitted)"
                    ax.plot(bb["d"], bb["gain"], marker=INCOMPLETE.get(st, "X"), linestyle="none",
                            color=INCOMPLETE_COLOR, markersize=4, label=lab if lab not in seen else "_nolegend_",
                            gid=f"incomplete:{st}")
                    seen.add(lab)
        ax.axhline(0, color="0.7", linewidth=0.6, zorder=0)
        ax.set_xlabel(SQRT_KL)
        ax.set_ylabel(f"{which} gain over SFT")
        ax.set_xlim(left=0)
        ax.margins(y=0.12)
        if not len(p):
            ax.text(0.5, 0.5, "no over-optimisation records\n(rlhf eval --suite overopt)", ha="center",
                    va="center", transform=ax.transAxes)
    handles, labels = legend_entries(axes[0])
    if handles:
        from matplotlib.lines import Line2D
        handles.append(Line2D([], [], color="0.3", linestyle="-"))
        labels.append("fit: d(α − β log d) (RL), d(α − β d) (BoN, dashed)")
        fig.legend(handles, labels, loc="outside lower center", ncol=min(3, len(labels)))
    return fig, pd.DataFrame(rows)


# ------------------------------------------------------------------ training curves
CURVES = [("ppo_reward", "ppo_reward"), ("rm_score", "rm_score"), ("gold_reward", "gold_reward"), ("kl", "KL (nats)"),
          ("beta", "β (KL coefficient)"), ("clipfrac", "clip fraction"), ("vf_loss", "value loss"),
          ("ptx_loss", "ptx loss (nats/token)"), ("entropy", "entropy (nats/token)")]


def smooth(values: pd.Series, window: int) -> pd.Series:
    """Exponential moving average with span ``window`` (TensorBoard-like), NaNs skipped."""
    return values.ewm(span=max(window, 1), ignore_na=True).mean()


def curves_figure(data: Data, window: Optional[int] = None):
    cur = data.curves
    present = [(m, lab) for m, lab in CURVES if m in cur.columns and cur[m].notna().any()] or CURVES[:1]
    ncol = 4
    nrow = math.ceil(len(present) / ncol)
    fig, axes = new_figure(PAGE_IN, 0.9 + 1.45 * nrow, nrow, ncol, sharex=True)
    conds = data.conditions
    runs = data.runs
    cells = sorted({tuple(_none(r[k]) for k in conds) for _, r in runs.iterrows()},
                   key=lambda t: tuple(sort_key(v) for v in t))
    pal = palette(max(len(cells), 1))
    rows = []
    seen: set = set()
    for idx, (m, lab) in enumerate(present):
        ax = axes[idx // ncol][idx % ncol]
        for _, r in runs.iterrows():
            c = cur[cur["run_id"] == r["run_id"]].sort_values("step") if len(cur) else cur
            if not len(c) or m not in c.columns:
                continue
            cell = tuple(_none(r[k]) for k in conds)
            color = pal[cells.index(cell) % len(pal)]
            w = window or max(1, len(c) // 10)
            sm = smooth(c[m].astype(float), w)
            clabel = ", ".join(f"{symbol(k)} = {fmt_value(v)}" for k, v in zip(conds, cell)) or "run"
            done = r["state"] == DONE
            ax.plot(c["step"], c[m], color=color, alpha=0.25, linewidth=0.6, label="_nolegend_")
            ax.plot(c["step"], sm, color=color, linewidth=1.1, linestyle="-" if done else "--",
                    label=clabel if clabel not in seen else "_nolegend_", gid=f"smoothed:{r['run_id']}")
            seen.add(clabel)
            if not done:
                st = r["state"]
                mk = f"run {st} (last step)"
                ax.plot([c["step"].iloc[-1]], [sm.iloc[-1]], marker=INCOMPLETE.get(st, "X"), color=INCOMPLETE_COLOR,
                        linestyle="none", label=mk if mk not in seen else "_nolegend_", gid=f"incomplete:{st}")
                seen.add(mk)
            for s, v, smv in zip(c["step"], c[m], sm):
                rows.append({"run_id": r["run_id"], "state": r["state"], "cell": clabel, "metric": m,
                             "step": s, "value": v, "smoothed": smv})
        ax.set_ylabel(lab)
        if idx // ncol == nrow - 1 or idx + ncol >= len(present):
            ax.set_xlabel("PPO iteration")
            ax.xaxis.set_tick_params(labelbottom=True)
    for idx in range(len(present), nrow * ncol):
        axes[idx // ncol][idx % ncol].set_visible(False)
    handles, labels = [], []
    for row in axes:
        for ax in row:
            for hd, lb in zip(*ax.get_legend_handles_labels()):
                if lb not in labels:
                    handles.append(hd)
                    labels.append(lb)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)))
    if not len(cur):
        axes[0][0].text(0.5, 0.5, "no PPO metrics", ha="center", va="center", transform=axes[0][0].transAxes)
    return fig, pd.DataFrame(rows)


# ------------------------------------------------------------------ alignment tax
REGRESSION_LABELS = {"lm_loss": "Δ held-out LM loss\n(nats/token)", "perplexity": "Δ perplexity\n(held-out text)",
                     "stereotype_bias": "Δ stereotype bias\n(PPO − SFT)"}


def _bias_deltas(data: Data, recs: pd.DataFrame) -> dict:
    """Per run: the final policy's stereotype bias minus SFT's, from the overopt ``rl``
    records, else from the PPO stage's held-out line (``ppo.heldout_{ppo,sft}``); runs with
    neither (made before the probe existed) have none."""
    out = {}
    if not recs.empty:
        sel = recs[(recs["suite"] == "overopt") & (recs["metric"] == "stereotype_bias") & (recs["subset"] == "rl")]
        for run_id, g in sel.groupby("run_id"):
            v = {lb: float(x) for lb, x in zip(g["checkpoint_label"], g["value"]) if pd.notna(x)}
            if "ppo" in v and "sft" in v:
                out[run_id] = v["ppo"] - v["sft"]
    cols = ("ppo.heldout_ppo.stereotype_bias", "ppo.heldout_sft.stereotype_bias")
    if set(cols) <= set(data.runs.columns):
        for rid, a, b in zip(data.runs["run_id"], data.runs[cols[0]], data.runs[cols[1]]):
            if rid not in out and pd.notna(a) and pd.notna(b):
                out[rid] = float(a) - float(b)
    return out


def alignment_tax_data(data: Data, per_run: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """Per run and regression metric: delta of the final policy against SFT; and, beside it,
    the delta of the toy world's stereotype bias (where the run has it)."""
    recs = latest_records(data.records)
    state = dict(zip(data.runs["run_id"], data.runs["state"]))
    gamma = dict(zip(data.runs["run_id"], data.runs["ppo.ptx_coef"])) if "ppo.ptx_coef" in data.runs else {}
    rows = []
    if not recs.empty and "delta_vs_ref" in recs.columns:
        sel = recs[(recs["suite"] == "regression") & (recs["checkpoint_label"] == "ppo") & recs["delta_vs_ref"].notna()]
        for _, r in sel.iterrows():
            name = r["metric"] if r["metric"] in REGRESSION_LABELS else f"{r['subset']}/{r['metric']}"
            rows.append({"run_id": r["run_id"], "state": state.get(r["run_id"], ""), "metric": name,
                         "gamma": gamma.get(r["run_id"], math.nan), "delta": float(r["delta_vs_ref"])})
    have = {x["run_id"] for x in rows}
    per_run = run_metrics(data) if per_run is None else per_run
    for _, r in per_run.iterrows():  # runs without a regression eval: the PPO stage's own held-out loss
        if r["run_id"] not in have and pd.notna(r["lm_loss_delta"]):
            rows.append({"run_id": r["run_id"], "state": r["state"], "metric": "lm_loss",
                         "gamma": gamma.get(r["run_id"], math.nan), "delta": float(r["lm_loss_delta"])})
    for rid, delta in _bias_deltas(data, recs).items():  # bias beside the tax: what PPO did to it
        rows.append({"run_id": rid, "state": state.get(rid, ""), "metric": "stereotype_bias",
                     "gamma": gamma.get(rid, math.nan), "delta": delta})
    for _, r in data.runs.iterrows():  # runs with nothing at all still appear (as not done)
        if r["run_id"] not in {x["run_id"] for x in rows} and r["state"] != DONE:
            rows.append({"run_id": r["run_id"], "state": r["state"], "metric": "lm_loss",
                         "gamma": gamma.get(r["run_id"], math.nan), "delta": math.nan})
    return pd.DataFrame(rows, columns=["run_id", "state", "metric", "gamma", "delta"])


def alignment_tax_figure(data: Data, per_run: Optional[pd.DataFrame] = None):
    from .results import t_ci
    d = alignment_tax_data(data, per_run)
    metrics = list(dict.fromkeys(d["metric"])) or ["lm_loss"]
    fig, axes = new_figure(COLUMN_IN if len(metrics) <= 2 else PAGE_IN, 2.9, 1, len(metrics))
    rows = []
    gammas = sorted({_none(g) for g in d["gamma"]}, key=sort_key) or ["none"]
    xpos = {g: i for i, g in enumerate(gammas)}
    pal = palette(len(gammas))
    for ax, m in zip(axes[0], metrics):
        seen: set = set()
        dm = d[d["metric"] == m]
        for g in gammas:
            sel = dm[dm["gamma"].map(_none) == g]
            done = sel[sel["state"] == DONE]
            mean, lo, hi, n = t_ci(done["delta"].tolist())
            x = xpos[g]
            color = pal[0] if (isinstance(g, (int, float)) and g == 0) else pal[min(1, len(pal) - 1)]
            ax.bar([x], [0 if math.isnan(mean) else mean], width=0.6, color=color, alpha=0.8, gid=f"bar:{fmt_value(g)}")
            if not math.isnan(lo):
                ax.errorbar([x], [mean], yerr=[[mean - lo], [hi - mean]], color="black", linewidth=0.8)
            jitter = np.linspace(-0.12, 0.12, len(done)) if len(done) > 1 else np.zeros(len(done))
            ax.plot(x + jitter, done["delta"], marker="o", linestyle="none", color="black", markersize=2.5,
                    label="run" if "run" not in seen else "_nolegend_", gid=f"runs:{fmt_value(g)}")
            seen.add("run")
            rows.append({"metric": m, "gamma": fmt_value(g), "mean": mean, "ci_low": lo, "ci_high": hi, "n": n,
                         "runs": ", ".join(done["run_id"])})
            bad = sel[sel["state"] != DONE]
            if len(bad):
                _mark_incomplete(ax, [x] * len(bad), list(bad["state"]), seen)
        ax.axhline(0, color="0.5", linewidth=0.6)
        ax.set_xticks(list(xpos.values()), [fmt_value(g) for g in gammas])
        ax.set_xlim(-0.6, len(gammas) - 0.4)
        ax.set_xlabel("γ (ptx mix)")
        ax.set_ylabel(REGRESSION_LABELS.get(m, f"Δ {m}"))
        ax.margins(y=0.2)
    handles, labels = legend_entries(axes[0])
    if handles:
        wide = fig.get_size_inches()[0] > COLUMN_IN
        fig.legend(handles, labels, loc="outside lower center", ncol=min(3 if wide else 1, len(labels)))
    return fig, pd.DataFrame(rows)


# ------------------------------------------------------------------ reward model
RM_METRICS = [("rm.heldout_accuracy", "held-out accuracy"), ("rm.heldout_gold_agreement", "agreement with gold")]


def reward_model_figure(data: Data):
    """Held-out ranking accuracy (and agreement with the gold labeler) against K and against
    the number of ranked comparisons (prompts × K responses); mean and 95% CI over RMs."""
    from .results import t_ci
    runs = data.runs
    cols = [c for c, _ in RM_METRICS if c in runs.columns]
    xs = [("rm.k", "K (responses ranked per prompt)"), ("rm.n_comparisons", "comparisons (ranked prompts)")]
    fig, axes = new_figure(COLUMN_IN, 3.6, 2, 1)
    rows = []
    have = runs[runs[cols].notna().any(axis=1)] if cols else runs.iloc[:0]
    # runs of the same seed and RM config share one reward model: count it once
    ident = [c for c in ("seed", "rm.k", "rm.n_comparisons", *cols) if c in have.columns]
    rms = have.drop_duplicates(ident) if len(have) else have
    pal = palette(len(cols) + 1)
    for ax, (xk, xl) in zip(axes[:, 0], xs):
        if xk not in rms.columns or not len(rms):
            ax.text(0.5, 0.5, "no reward-model summaries", ha="center", va="center", transform=ax.transAxes)
            ax.set_xlabel(xl)
            continue
        xvals = sorted(rms[xk].dropna().unique(), key=float)
        for ci, (c, lab) in enumerate((c, lab) for c, lab in RM_METRICS if c in cols):
            ms, los, his = [], [], []
            for xv in xvals:
                mean, lo, hi, n = t_ci(rms.loc[rms[xk] == xv, c].astype(float).tolist())
                ms.append(mean)
                los.append(lo)
                his.append(hi)
                rows.append({"x": xk, "x_value": xv, "metric": c, "mean": mean, "ci_low": lo, "ci_high": hi, "n": n})
            _errorbar(ax, [float(v) for v in xvals], ms, los, his, marker="o", color=pal[ci], label=lab,
                      gid=f"mean:{c}")
        ax.axhline(0.5, color="0.7", linewidth=0.6, linestyle=":", zorder=0)
        ax.set_xlabel(xl)
        ax.set_ylabel("fraction of pairs")
        if len(xvals) == 1:
            ax.set_xticks([float(xvals[0])])
        if xk == "rm.k":
            ax.set_xlim(1.5, 9.5)
        ax.margins(y=0.2)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        axes[0][0].legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.02), ncol=2)
    return fig, pd.DataFrame(rows)
