"""The claims table: each claim of a findings suite, its statistic, 95% CI, seeds and verdict.

    from rlhf_analysis.claims import load_claims, claims_table
    rows = claims_table(load_claims("experiments/findings/claims.yaml"), data)   # data: rlhf_analysis.data.load

A claims file (YAML) lists claims, each with rows (a1, b1, b2 ...)::

    claims:
      - id: a
        name: RLHF helps at the defaults
        text: the final policy's gold reward is above SFT's
        rows:
          - id: a
            statistic: Δ gold reward (PPO − SFT), overopt RL samples
            kind: paired                      # mean | paired | overopt | overopt_fit | monotone | within_ci
            x: {sweep: default, record: {suite: overopt, metric: gold_reward, subset: rl, checkpoint: ppo}}
            y: {sweep: default, record: {suite: overopt, metric: gold_reward, subset: rl, checkpoint: sft}}
            range: [-4, 4]                    # the statistic's possible values: the CI is clipped to it
            verdict: [ci_low > 0]             # all must hold; or "reported" (no verdict)

A *source* (``x``, ``y``) names a sweep (the sweep directory's name) and optionally
``where`` (config key -> value, or ``"min>0"``: the sweep's smallest positive value) for
the cell, and the per-run value: ``record`` (an eval
record: suite, metric, subset, checkpoint label, ``field`` value or delta_vs_ref) or
``summary`` (a column of the runs table: ``ppo.final_kl``, ``rm.heldout_accuracy``).

Kinds (per seed, then a Student-t 95% interval over seeds, clipped to ``range``):

* ``mean``: the value of ``x``.
* ``paired``: x − y of the same seed (the same run when x and y name the same cell).
* ``overopt``: along the run's gold-vs-√KL points (overopt ``rl`` records of sft,
  ppo/kl_*, ppo): ``quantity: gold_drop`` = peak gold − final gold; ``rm_rise`` =
  rm_score(final) − rm_score at the gold peak.
* ``overopt_fit``: R² of Gao et al.'s form (``rlhf_eval.metrics.fit_overoptimization``) fitted to
  the seed-averaged curve (``method: rl`` or ``bon``); one number, no CI.
* ``monotone``: the means of ``x`` over the cells of ``over`` (a config key) fall
  monotonically, and the 95% CIs of the two end cells are disjoint (value: first − last).
* ``within_ci``: the mean of ``x`` lies inside the 95% CI of ``y`` (the CI shown is y's);
  its verdict rule ``within_ci``, or ``not_below_ci`` (the mean of ``x`` is at least the
  lower end of y's CI: nothing lost against the reference).

Verdict rules: ``<value|ci_low|ci_high> <op> <number>``, ``in [lo, hi]`` (the CI inside
the interval), ``monotone`` / ``within_ci`` (the kinds' own tests), ``require_each_seed``
(a row option: a source and ``min``, checked in every seed). A row is "holds" when every
rule does, "does not hold" otherwise, "reported" without rules; with fewer than 2 seeds it
gives the point value, no CI, and says "CI needs >= 2 seeds". Runs that are not done
(failed, diverged, interrupted, running, missing) are counted in the row's ``runs`` text and
never averaged in.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from rlhf.config import InputError

from .data import DONE, Data, latest_records, sort_key
from .results import t_ci

KINDS = ("mean", "paired", "overopt", "overopt_fit", "monotone", "within_ci")
HOLDS, FAILS, REPORTED = "holds", "does not hold", "reported"
NO_CI = "CI needs >= 2 seeds"
REF_CI = "CI of the reference cell"  # a within_ci row's ci_method begins so: its CI is y's
_RULE = re.compile(r"^\s*(value|ci_low|ci_high)\s*(>=|<=|>|<|==)\s*(-?[0-9.eE+-]+)\s*$")
_IN = re.compile(r"^\s*in\s*\[\s*(-?[0-9.eE+-]+)\s*,\s*(-?[0-9.eE+-]+)\s*\]\s*$")
_OPS = {">": operator.gt, "<": operator.lt, ">=": operator.ge, "<=": operator.le, "==": operator.eq}


class ClaimsError(InputError):
    """A bad claims file (exit status 2): the message names the claim, row and key."""


@dataclass
class Row:
    claim: str
    id: str
    statistic: str
    kind: str
    spec: dict
    value: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    n: int = 0
    n_expected: int = 0
    runs: str = ""
    ci_method: str = ""
    verdict: str = ""
    detail: str = ""
    per_seed: dict = field(default_factory=dict)  # seed -> value (the figure's dots)
    curve: Optional[pd.DataFrame] = None  # overopt_fit / monotone: what the figure draws


@dataclass
class Claim:
    id: str
    name: str
    text: str
    rows: list[dict]


# ------------------------------------------------------------------ the file
def load_claims(path: str | Path) -> list[Claim]:
    from rlhf.config import read_yaml_file
    p = Path(path)
    data = read_yaml_file(p, ClaimsError, "claims file")
    if not isinstance(data, dict) or not isinstance(data.get("claims"), list):
        raise ClaimsError(f"{p}: expected a mapping with a 'claims' list")
    out = []
    for i, c in enumerate(data["claims"]):
        where = f"{p}: claims[{i}]"
        if not isinstance(c, dict) or not c.get("id") or not isinstance(c.get("rows"), list) or not c["rows"]:
            raise ClaimsError(f"{where}: each claim needs an id and a non-empty list of rows")
        for j, r in enumerate(c["rows"]):
            rw = f"{where} ({c['id']}) rows[{j}]"
            if not isinstance(r, dict) or r.get("kind") not in KINDS:
                raise ClaimsError(f"{rw}: kind must be one of {', '.join(KINDS)}, got {r.get('kind')!r}")
            for key in ("x",) + (("y",) if r["kind"] in ("paired", "within_ci") else ()):
                _check_source(r.get(key), f"{rw}: {key}", value=r["kind"] not in ("overopt", "overopt_fit"))
            if r.get("require_each_seed") is not None:
                req = r["require_each_seed"]
                _check_source(req, f"{rw}: require_each_seed")
                if not _is_number(req.get("min")):
                    raise ClaimsError(f"{rw}: require_each_seed needs 'min', a number, got {req.get('min')!r}")
            if r["kind"] == "monotone" and not isinstance(r.get("over"), str):
                raise ClaimsError(f"{rw}: kind monotone needs 'over', a config key, got {r.get('over')!r}")
            rng = r.get("range")
            if rng is not None and not (isinstance(rng, list) and len(rng) == 2 and all(map(_is_number, rng))):
                raise ClaimsError(f"{rw}: range must be [low, high], two numbers, got {rng!r}")
            rules = r.get("verdict", "reported")
            if rules != "reported":
                if not isinstance(rules, list):
                    raise ClaimsError(f"{rw}: verdict must be a list of rules or 'reported'")
                for rule in rules:
                    if not (_RULE.match(str(rule)) or _IN.match(str(rule)) or rule in ("monotone", "within_ci", "not_below_ci")):
                        raise ClaimsError(f"{rw}: verdict rule {rule!r} not understood (e.g. 'ci_low > 0', "
                                          f"'in [0.15, 0.6]', 'value >= 0.9')")
        out.append(Claim(id=str(c["id"]), name=str(c.get("name", c["id"])), text=str(c.get("text", "")),
                         rows=c["rows"]))
    return out


def _is_number(v) -> bool:
    """An int or float as YAML reads one (a YAML true/false is a bool, not a number)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_source(src, where: str, value: bool = True) -> None:
    """A source (x, y, require_each_seed): a sweep name, an optional ``where`` mapping, and
    (``value``: every kind but overopt and overopt_fit, which read the overopt records
    themselves) ``summary`` (a runs-table column) or ``record`` (a mapping with suite and metric)."""
    if not isinstance(src, dict) or not isinstance(src.get("sweep"), str):
        raise ClaimsError(f"{where}: must be a mapping with at least 'sweep' (a sweep name), got {src!r}")
    if src.get("where") is not None and not isinstance(src["where"], dict):
        raise ClaimsError(f"{where}: 'where' must map config keys to values, got {src['where']!r}")
    if "record" in src:
        rec = src["record"]
        if not isinstance(rec, dict) or not rec.get("suite") or not rec.get("metric"):
            raise ClaimsError(f"{where}: 'record' must be a mapping with 'suite' and 'metric', got {rec!r}")
    elif value and not isinstance(src.get("summary"), str):
        raise ClaimsError(f"{where}: give 'summary' (a runs-table column such as ppo.final_kl) or 'record'")


# ------------------------------------------------------------------ values per run
def _sweep_of(runs: pd.DataFrame) -> pd.Series:
    return runs["source"].map(lambda s: Path(str(s)).parent.name if str(s).endswith((".parquet", ".csv"))
                              else Path(str(s)).name)


def _same(a, b) -> bool:
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or str(b).lower() in ("none", "null")
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    except (TypeError, ValueError):
        return str(a) == str(b)


def cell_runs(data: Data, src: dict) -> pd.DataFrame:
    """Every run (any state) of the cell ``src`` names: its sweep and its ``where`` keys."""
    runs = data.runs
    sweeps = _sweep_of(runs)
    sel = runs[sweeps == str(src["sweep"])]
    if sel.empty:
        raise ClaimsError(f"sweep {src['sweep']!r} is not among the report's inputs (they hold: "
                          f"{', '.join(sorted(set(sweeps.astype(str)))) or 'no runs'})")
    for k, v in (src.get("where") or {}).items():
        if k not in sel.columns:
            raise ClaimsError(f"where: {k} is not a config key of sweep {src['sweep']}")
        if v == "min>0":  # the smallest positive value of the sweep (e.g. the smallest beta > 0)
            pos = [float(a) for a in sel[k].dropna().unique() if float(a) > 0]
            v = min(pos) if pos else math.nan
        sel = sel[sel[k].map(lambda a: _same(a, v)).astype(bool)]  # an empty mask must not read as columns
    return sel


def _records(data: Data) -> pd.DataFrame:
    if not hasattr(data, "_latest"):
        data._latest = latest_records(data.records)
    return data._latest


def _record_value(data: Data, run_id: str, rec: dict) -> float:
    recs = _records(data)
    if recs.empty:
        return math.nan
    metric = rec["metric"]
    for m in (metric,):
        sel = recs[(recs["run_id"] == run_id) & (recs["suite"] == rec["suite"]) & (recs["metric"] == m)
                   & (recs["subset"].fillna("") == str(rec.get("subset", "")))]
        if "checkpoint" in rec:
            sel = sel[sel["checkpoint_label"] == rec["checkpoint"]]
        if len(sel):
            v = sel.iloc[-1].get(rec.get("field", "value"))
            return _num(v)
    return math.nan


def _num(v) -> float:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return math.nan
    return v


def run_value(data: Data, run: pd.Series, src: dict) -> float:
    if "record" in src:
        return _record_value(data, run["run_id"], src["record"])
    if "summary" in src:
        return _num(run.get(src["summary"]))
    raise ClaimsError(f"source {src}: give 'record' or 'summary'")


def per_seed(data: Data, src: dict) -> tuple[dict, pd.DataFrame]:
    """{seed: value} over the done runs of the cell (NaN where the value is missing), and
    every run of the cell."""
    runs = cell_runs(data, src)
    out = {}
    for _, r in runs[runs["state"] == DONE].iterrows():
        out[int(r["seed"])] = run_value(data, r, src)
    return out, runs


def _count_text(n: int, all_runs: pd.DataFrame, missing_value: int, seeds_expected: int) -> str:
    text = f"n={n} of {seeds_expected}"
    states = all_runs["state"].value_counts().to_dict() if len(all_runs) else {}
    bad = {s: c for s, c in states.items() if s != DONE}
    parts = [f"{c} {s}" for s, c in sorted(bad.items())]
    if missing_value:
        parts.append(f"{missing_value} done without this value (eval record or summary key missing)")
    return text + ("; " + ", ".join(parts) if parts else "")


# ------------------------------------------------------------------ statistics
def _clip(x: float, rng) -> float:
    if rng is None or math.isnan(x):
        return x
    return min(max(x, float(rng[0])), float(rng[1]))


def _interval(values: dict, row: Row, rng) -> None:
    vals = [v for v in values.values() if not math.isnan(v)]
    mean, lo, hi, n = t_ci(vals)
    row.value, row.n = mean, n
    if n >= 2:
        row.ci_low, row.ci_high = _clip(lo, rng), _clip(hi, rng)
        row.ci_method = f"t-interval, n={n}"
    else:
        row.ci_method = NO_CI


def _overopt_points(data: Data, run_id: str, metric: str) -> pd.DataFrame:
    """(label, d = sqrt(kl), value) of the run's RL over-optimisation points."""
    recs = _records(data)
    if recs.empty:
        return pd.DataFrame(columns=["label", "d", "value"])
    r = recs[(recs["run_id"] == run_id) & (recs["suite"] == "overopt") & (recs["subset"] == "rl")]
    out = []
    for label, g in r.groupby("checkpoint_label"):
        if not (label == "sft" or str(label).startswith("ppo")):
            continue
        v = [metric] if (g["metric"] == metric).any() else []
        kl = g[g["metric"] == "kl"]["value"]
        if not v or (label != "sft" and kl.empty):
            continue
        val = float(g[g["metric"] == v[0]]["value"].iloc[-1])
        k = 0.0 if label == "sft" and kl.empty else max(float(kl.iloc[-1]), 0.0)
        out.append({"label": label, "d": math.sqrt(k), "value": val})
    # in order of KL, so that of two equal golds the peak is the earlier one
    return pd.DataFrame(out, columns=["label", "d", "value"]).sort_values("d", kind="stable").reset_index(drop=True)


def _overopt_seed_value(data: Data, run_id: str, quantity: str) -> float:
    gold = _overopt_points(data, run_id, "gold_reward")
    if gold.empty or "ppo" not in set(gold["label"]):
        return math.nan
    peak = gold.loc[gold["value"].idxmax()]
    final = gold[gold["label"] == "ppo"].iloc[0]
    if quantity == "gold_drop":
        return float(peak["value"] - final["value"])
    if quantity == "rm_rise":
        rm = _overopt_points(data, run_id, "rm_score").set_index("label")["value"]
        if "ppo" not in rm.index or peak["label"] not in rm.index:
            return math.nan
        return float(rm["ppo"] - rm[peak["label"]])
    raise ClaimsError(f"overopt quantity {quantity!r}: expected gold_drop or rm_rise")


def _bon_points(data: Data, run_id: str) -> pd.DataFrame:
    recs = _records(data)
    if recs.empty:
        return pd.DataFrame(columns=["n", "d", "value"])
    r = recs[(recs["run_id"] == run_id) & (recs["suite"] == "overopt")
             & recs["subset"].astype(str).str.startswith("bon_n=")]
    out = []
    for sub, g in r.groupby("subset"):
        gold, kl = g[g["metric"] == "gold_reward"]["value"], g[g["metric"] == "kl"]["value"]
        if gold.empty or kl.empty:
            continue
        out.append({"n": int(str(sub).split("=")[1]), "d": math.sqrt(max(float(kl.iloc[-1]), 0.0)),
                    "value": float(gold.iloc[-1])})
    return pd.DataFrame(out, columns=["n", "d", "value"])


def _fit_row(data: Data, row: Row, src: dict) -> None:
    """Gao et al.'s form fitted to the seed-averaged gold-reward gain (rlhf_eval.metrics)."""
    from rlhf_eval.metrics import fit_overoptimization
    method = row.spec.get("method", "rl")
    runs = cell_runs(data, src)
    done = runs[runs["state"] == DONE]
    curves = []
    for _, r in done.iterrows():
        pts = _overopt_points(data, r["run_id"], "gold_reward") if method == "rl" else _bon_points(data, r["run_id"])
        if len(pts):
            pts = pts.copy()
            pts["key"] = pts["label"] if method == "rl" else pts["n"]
            pts["seed"] = int(r["seed"])
            curves.append(pts)
    n = len(curves)
    row.n, row.n_expected = n, len(runs)
    row.runs = _count_text(n, runs, len(done) - n, runs["seed"].nunique() if len(runs) else 0)
    row.ci_method = f"fit to the mean over {n} seeds (no CI)"
    if not curves:
        return
    allp = pd.concat(curves, ignore_index=True)
    # a point enters the average only where every seed has it (kl levels each run reached)
    counts = allp.groupby("key")["seed"].nunique()
    keep = counts[counts == n].index
    avg = allp[allp["key"].isin(keep)].groupby("key", sort=False)[["d", "value"]].mean().sort_values("d")
    base = avg[avg["d"] == 0]["value"]
    base = float(base.iloc[0]) if len(base) else float(avg["value"].iloc[0])
    f = fit_overoptimization(avg["d"].to_numpy(), avg["value"].to_numpy() - base, method)
    row.value = f["r2"]
    row.detail = f"{method} form, α={f['alpha']:.3g}, β={f['beta']:.3g}, {len(avg)} points"
    row.curve = avg.reset_index().assign(gain=lambda t: t["value"] - base, alpha=f["alpha"], beta=f["beta"])


def _monotone_row(data: Data, row: Row, src: dict) -> dict:
    key = row.spec.get("over")
    if not key:
        raise ClaimsError(f"row {row.id}: kind monotone needs 'over' (a config key)")
    runs = cell_runs(data, src)
    levels = sorted({v for v in runs[key].tolist()}, key=sort_key)
    cells = []
    for v in levels:
        vals, cruns = per_seed(data, {**src, "where": {**(src.get("where") or {}), key: v}})
        mean, lo, hi, n = t_ci([x for x in vals.values() if not math.isnan(x)])
        rng = row.spec.get("range")
        cells.append({key: v, "mean": mean, "ci_low": _clip(lo, rng), "ci_high": _clip(hi, rng), "n": n,
                      "runs": len(cruns), "values": vals})
    row.curve = pd.DataFrame(cells)
    ns = [c["n"] for c in cells]
    row.n = min(ns) if ns else 0
    bad = runs[runs["state"] != DONE]["state"].value_counts().to_dict()
    row.runs = f"n={row.n}..{max(ns) if ns else 0} per cell, {len(cells)} cells" + \
        ("; " + ", ".join(f"{c} {s}" for s, c in sorted(bad.items())) if bad else "")
    means = [c["mean"] for c in cells]
    row.value = means[0] - means[-1] if len(means) >= 2 else math.nan
    row.detail = "means " + " > ".join(f"{c['mean']:.3g} ({key}={c[key]})" for c in cells)
    row.ci_method = f"t-interval per cell, n>={row.n}" if row.n >= 2 else NO_CI
    mono = len(means) >= 3 and all(a > b for a, b in zip(means, means[1:]))
    disjoint = (len(cells) >= 2 and row.n >= 2 and not math.isnan(cells[0]["ci_low"])
                and cells[-1]["ci_high"] < cells[0]["ci_low"])
    return {"monotone": mono and disjoint}


def compute_row(data: Data, claim: Claim, spec: dict) -> Row:
    row = Row(claim=claim.id, id=str(spec.get("id", claim.id)), statistic=str(spec.get("statistic", "")),
              kind=spec["kind"], spec=spec)
    rng = spec.get("range")
    x = spec["x"]
    extra: dict[str, bool] = {}
    if spec["kind"] in ("mean", "paired", "within_ci", "overopt"):
        if spec["kind"] == "overopt":
            runs = cell_runs(data, x)
            xs = {int(r["seed"]): _overopt_seed_value(data, r["run_id"], spec.get("quantity", "gold_drop"))
                  for _, r in runs[runs["state"] == DONE].iterrows()}
            all_runs = runs
        else:
            xs, all_runs = per_seed(data, x)
        values = xs
        if spec["kind"] == "paired":
            ys, yruns = per_seed(data, spec["y"])
            if not yruns.index.equals(all_runs.index):
                all_runs = pd.concat([all_runs, yruns[~yruns.index.isin(all_runs.index)]])
            values = {s: xs[s] - ys[s] for s in xs if s in ys}
        seeds_expected = all_runs["seed"].nunique() if len(all_runs) else 0
        missing = sum(1 for v in values.values() if math.isnan(v))
        if spec["kind"] == "within_ci":
            ys, yruns = per_seed(data, spec["y"])
            _interval(xs, row, rng)
            ymean, ylo, yhi, yn = t_ci([v for v in ys.values() if not math.isnan(v)])
            row.ci_low, row.ci_high = (_clip(ylo, rng), _clip(yhi, rng)) if yn >= 2 else (math.nan, math.nan)
            row.ci_method = f"{REF_CI}, t-interval, n={yn}" if yn >= 2 else NO_CI
            row.detail = f"reference mean {ymean:.3g}"
            extra["within_ci"] = yn >= 2 and ylo <= row.value <= yhi
            extra["not_below_ci"] = yn >= 2 and row.value >= ylo  # no loss against the reference
            row.detail += ("; inside its CI" if extra["within_ci"] else
                           "; above its CI" if yn >= 2 and row.value > yhi else "; below its CI" if yn >= 2 else "")
            all_runs = pd.concat([all_runs, yruns[~yruns.index.isin(all_runs.index)]])
            seeds_expected = all_runs["seed"].nunique()
        else:
            _interval(values, row, rng)
        row.per_seed = {s: v for s, v in values.items() if not math.isnan(v)}
        row.n_expected = seeds_expected
        row.runs = _count_text(row.n, all_runs, missing, seeds_expected)
    elif spec["kind"] == "overopt_fit":
        _fit_row(data, row, x)
    elif spec["kind"] == "monotone":
        extra.update(_monotone_row(data, row, x))
    req = spec.get("require_each_seed")
    if req:
        vals, _ = per_seed(data, req)
        vals = {s: v for s, v in vals.items() if s in row.per_seed or not row.per_seed}
        ok = bool(vals) and all(not math.isnan(v) and v >= float(req["min"]) for v in vals.values())
        extra["require_each_seed"] = ok
        low = min(vals.values()) if vals else math.nan
        row.detail = (row.detail + "; " if row.detail else "") + \
            f"min {req.get('summary', req.get('record', {}).get('metric'))} per seed {low:g} (need >= {req['min']})"
    row.verdict = _verdict(row, spec.get("verdict", "reported"), extra)
    return row


def _verdict(row: Row, rules, extra: dict) -> str:
    if rules == "reported":
        return REPORTED
    if math.isnan(row.value):
        return "no data"
    ok = True
    needs_ci = False
    for rule in rules:
        m = _RULE.match(str(rule))
        if m:
            fieldname, op, num = m.group(1), m.group(2), float(m.group(3))
            if fieldname != "value":
                needs_ci = True
            v = getattr(row, fieldname)
            ok &= (not math.isnan(v)) and _OPS[op](v, num)
            continue
        m = _IN.match(str(rule))
        if m:
            needs_ci = True
            lo, hi = float(m.group(1)), float(m.group(2))
            ok &= (not math.isnan(row.ci_low)) and lo <= row.ci_low and row.ci_high <= hi
            continue
        needs_ci = needs_ci or rule in ("monotone", "within_ci", "not_below_ci")
        ok &= bool(extra.get(rule, False))
    if "require_each_seed" in extra:
        ok &= extra["require_each_seed"]
    if needs_ci and row.n < 2:
        return f"no verdict ({NO_CI})"
    return HOLDS if ok else FAILS


def claims_table(claims: list[Claim], data: Data) -> list[Row]:
    rows = []
    for c in claims:
        for spec in c.rows:
            try:
                rows.append(compute_row(data, c, spec))
            except ClaimsError as e:  # name the row: the file's check cannot know the inputs
                raise ClaimsError(f"claim {c.id}, row {spec.get('id', c.id)}: {e}") from None
    return rows


# ------------------------------------------------------------------ output
def fmt(v: float, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}g}"


def ci_text(r: Row) -> str:
    if math.isnan(r.ci_low) or math.isnan(r.ci_high):
        return r.ci_method or NO_CI
    return f"[{fmt(r.ci_low)}, {fmt(r.ci_high)}] ({r.ci_method})"


def to_frame(rows: list[Row]) -> pd.DataFrame:
    return pd.DataFrame([{"claim": r.claim, "row": r.id, "statistic": r.statistic, "value": r.value,
                          "ci_low": r.ci_low, "ci_high": r.ci_high, "ci_method": r.ci_method, "n": r.n,
                          "runs": r.runs, "verdict": r.verdict, "detail": r.detail} for r in rows])


def to_markdown(rows: list[Row], claims: list[Claim], figures: Optional[dict] = None) -> str:
    names = {c.id: c.name for c in claims}
    out = ["| claim | statistic | value | 95% CI | n seeds | verdict |", "|---|---|---|---|---|---|"]
    for r in rows:
        fig = f" ([figure]({figures[r.claim]}))" if figures and r.claim in figures else ""
        stat = r.statistic + (f"; {r.detail}" if r.detail else "")
        out.append(f"| {r.id}: {names.get(r.claim, '')}{fig} | {stat.replace('|', '/')} | {fmt(r.value)} | "
                   f"{ci_text(r)} | {r.runs} | **{r.verdict}** |")
    return "\n".join(out)


def to_latex(rows: list[Row], claims: list[Claim]) -> str:
    from .tables import latex_escape
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{llrlll}", r"\toprule",
             r"Claim & Statistic & Value & 95\% CI & Seeds & Verdict \\", r"\midrule"]
    for r in rows:
        ci = (f"[{fmt(r.ci_low)}, {fmt(r.ci_high)}]" if not (math.isnan(r.ci_low) or math.isnan(r.ci_high))
              else (r.ci_method or NO_CI))
        lines.append(" & ".join(latex_escape(str(x)) for x in (r.id, r.statistic, fmt(r.value), ci, r.runs,
                                                              r.verdict)) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}",
              r"\caption{Claims: statistic, mean over seeds with a Student-t 95\% interval (clipped to the "
              r"statistic's range), seeds, verdict.}", r"\label{tab:claims}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def seeds_frame(rows: list[Row]) -> pd.DataFrame:
    """Every row's per-seed values (claim, row, seed, value): the numbers its mean is
    computed from, and its CI too except for ``within_ci`` (whose CI is the reference cell's);
    rows of kinds mean, paired, within_ci and overopt (a fit or a monotone row has none).
    ``rlhf compare`` pairs two reports' rows by seed from this table."""
    return pd.DataFrame([{"claim": r.claim, "row": r.id, "seed": int(s), "value": float(v)}
                         for r in rows for s, v in sorted(r.per_seed.items())],
                        columns=["claim", "row", "seed", "value"])


def write_claims(rows: list[Row], claims: list[Claim], out: Path, figures: Optional[dict] = None) -> dict[str, Path]:
    """claims.md, claims.csv, claims.tex and claims_seeds.csv (:func:`seeds_frame`) under
    ``out`` (a tables/ directory), each written whole or not at all."""
    from rlhf.rundir import atomic_write_text
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "claims.md", "csv": out / "claims.csv", "tex": out / "claims.tex",
             "seeds": out / "claims_seeds.csv"}
    atomic_write_text(paths["md"], to_markdown(rows, claims, figures) + "\n")
    atomic_write_text(paths["csv"], to_frame(rows).to_csv(index=False))
    atomic_write_text(paths["tex"], to_latex(rows, claims))
    atomic_write_text(paths["seeds"], seeds_frame(rows).to_csv(index=False))
    return paths


def claim_figure(claim: Claim, rows: list[Row]):
    """One panel per row: per-seed dots, the mean with its 95% CI, the verdict's threshold;
    for fits, the seed-averaged curve and the fit; for monotone rows, the mean per cell."""
    from rlhf_eval.metrics import bon_form, rl_form

    from .style import new_figure
    import textwrap
    n = len(rows)
    ncols = min(n, 4)
    nrows = (n + ncols - 1) // ncols
    fig, axes = new_figure(2.6 * ncols, 2.5 * nrows, nrows=nrows, ncols=ncols)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    data = []
    for i, (ax, r) in enumerate(zip(flat, rows)):
        short = r.verdict if len(r.verdict) <= 16 else r.verdict.split(" (")[0]
        ax.set_title("\n".join(textwrap.wrap(f"{r.id}: {r.statistic}", 40)[:2]) + f"\n[{short}]", fontsize=6.5)
        ylab = "value per seed"
        if r.kind == "overopt_fit" and r.curve is not None and len(r.curve):
            c = r.curve
            ax.plot(c["d"], c["gain"], "o", label="seed mean")
            d = np.linspace(0, float(c["d"].max()), 50)
            form = rl_form if r.spec.get("method", "rl") == "rl" else bon_form
            if not math.isnan(float(c["alpha"].iloc[0])):
                ax.plot(d, form(d, float(c["alpha"].iloc[0]), float(c["beta"].iloc[0])), "-",
                        label=f"fit R²={fmt(r.value)}")
            ax.set_xlabel(r"$\sqrt{\mathrm{KL}}$")
            ax.set_ylabel("gold reward gain")
            ax.legend(fontsize=5.5, loc="best")
            for _, p in c.iterrows():
                data.append({"row": r.id, "x": p["d"], "y": p["gain"], "kind": "seed-mean point"})
        elif r.kind == "monotone" and r.curve is not None and len(r.curve):
            c = r.curve
            xs = np.arange(len(c))
            lo = np.where(c["ci_low"].isna(), c["mean"], c["ci_low"])
            hi = np.where(c["ci_high"].isna(), c["mean"], c["ci_high"])
            ax.errorbar(xs, c["mean"], yerr=[c["mean"] - lo, hi - c["mean"]], fmt="o-", capsize=2)
            key = r.spec["over"]
            ax.set_xticks(xs, [str(v) for v in c[key]])
            ax.set_xlabel(key)
            ax.set_ylabel("mean, 95% CI", fontsize=6)
            for _, p in c.iterrows():
                data.append({"row": r.id, "x": p[key], "y": p["mean"], "kind": "cell mean"})
        else:
            seeds = sorted(r.per_seed)
            ys = [r.per_seed[s] for s in seeds]
            jitter = np.linspace(-0.15, 0.15, len(ys)) if len(ys) > 1 else np.zeros(len(ys))
            ax.plot(jitter, ys, "o", alpha=0.6, label="seeds")
            if not math.isnan(r.value):
                if not math.isnan(r.ci_low) and r.kind == "within_ci":  # the CI is the reference cell's
                    ax.plot([0.5], [r.value], "s", label="mean")
                    ax.errorbar([0.8], [(r.ci_low + r.ci_high) / 2], yerr=[[(r.ci_high - r.ci_low) / 2]] * 2,
                                fmt="none", capsize=3, color="grey", label="reference 95% CI")
                elif not math.isnan(r.ci_low):
                    ax.errorbar([0.5], [r.value], yerr=[[max(0.0, r.value - r.ci_low)], [max(0.0, r.ci_high - r.value)]],
                                fmt="s", capsize=3, label="mean, 95% CI")
                else:
                    ax.plot([0.5], [r.value], "s", label="mean (no CI: 1 seed)")
            for rule in r.spec.get("verdict", []) if r.spec.get("verdict") != "reported" else []:
                m = _RULE.match(str(rule))
                if m:
                    ax.axhline(float(m.group(3)), color="grey", linestyle="--", linewidth=0.8)
                m = _IN.match(str(rule))
                if m:
                    ax.axhspan(float(m.group(1)), float(m.group(2)), color="grey", alpha=0.15)
            ax.set_xlim(-0.5, 1.0)
            ax.set_xticks([])
            ax.set_ylabel(ylab, fontsize=6)
            if i == 0:
                ax.legend(fontsize=5.5, loc="best")
            for s, y in zip(seeds, ys):
                data.append({"row": r.id, "x": s, "y": y, "kind": "seed"})
    fig.suptitle(f"Claim {claim.id}: {claim.name}", fontsize=8)
    return fig, pd.DataFrame(data, columns=["row", "x", "y", "kind"])


def write_claim_figures(rows: list[Row], claims: list[Claim], out: Path) -> dict[str, dict[str, Path]]:
    """figures/claim_<id>.{pdf,png,csv}: one figure per claim."""
    from .style import paper_style, save
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    with paper_style():
        for c in claims:
            rs = [r for r in rows if r.claim == c.id]
            if not rs:
                continue
            fig, fdata = claim_figure(c, rs)
            base = out / f"claim_{c.id}"
            fdata.to_csv(base.with_suffix(".csv"), index=False)
            pdf, png = save(fig, base)[:2]
            paths[c.id] = {"pdf": pdf, "png": png, "csv": base.with_suffix(".csv")}
    return paths
