"""`rlhf compare BASE NEW`: two claims tables row by row. Did a change move the science?

    rlhf compare findings_before/report findings/report --out findings/compare

A verdict is a threshold on a CI, so at 5 seeds a row whose CI touches its threshold can flip
under any change that redraws the seeds (one that moves floats by rounding does: training is
chaotic). The question a code change has to answer is whether the *statistic* moved, not
whether its verdict did. For every row in both tables this gives

    Δ = new − base, with a 95% CI:
      paired by seed when both reports have the same seeds: Student's t over the per-seed
        differences new_s − base_s (``results.t_ci``, the claims table's own interval);
      otherwise Welch's t over the two sets of per-seed values (``results.welch_ci``);
      a row with one number per report (a fit's R², a monotone row): Δ only, no CI.

and says where the CI excludes 0 ("differs"). With m rows compared, about 0.05·m of them
would differ by chance alone if nothing had changed (fewer or more, the rows are not
independent); the summary says so. Rows whose verdict changed are listed with their Δ.

BASE and NEW are report directories (``rlhf report ... --claims``: ``tables/claims.csv`` and
``tables/claims_seeds.csv``) or a findings output directory (``<out>/report``). A missing,
torn or inconsistent table is an input error (exit status 2) naming the file.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from rlhf.config import InputError

from .results import t_ci, welch_ci

CLAIMS_COLUMNS = ["claim", "row", "statistic", "value", "ci_low", "ci_high", "ci_method", "n", "verdict"]
SEEDS_COLUMNS = ["claim", "row", "seed", "value"]


class CompareError(InputError):
    """A report that cannot be compared (exit status 2): the message names the file."""


@dataclass
class Table:
    """One report's claims: ``claims`` (claims.csv) and ``seeds`` (row -> {seed: value})."""
    path: Path
    claims: pd.DataFrame
    seeds: dict


@dataclass
class Change:
    row: str
    claim: str
    statistic: str
    base_value: float
    base_ci_low: float
    base_ci_high: float
    base_verdict: str
    new_value: float
    new_ci_low: float
    new_ci_high: float
    new_verdict: str
    delta: float
    delta_ci_low: float
    delta_ci_high: float
    method: str
    differs: Optional[bool]  # None: no CI

    @property
    def verdict_changed(self) -> bool:
        return self.base_verdict != self.new_verdict


def _read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise CompareError(f"{path}: not found")
    try:
        df = pd.read_csv(path)
    except Exception as e:  # empty, torn or not a CSV
        raise CompareError(f"{path}: not a readable claims table ({type(e).__name__}: {e})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise CompareError(f"{path}: missing column(s) {', '.join(missing)} (expected {', '.join(columns)})")
    return df


def load_table(directory: str | Path) -> Table:
    """The claims of the report at ``directory`` (a report directory, or a findings output
    directory holding ``report/``), checked: every per-seed row names a row of claims.csv and
    its values average to that row's value (a torn or mixed-up pair of files fails here)."""
    d = Path(directory)
    if not (d / "tables" / "claims.csv").is_file() and (d / "report" / "tables" / "claims.csv").is_file():
        d = d / "report"
    tables = d / "tables"
    if not tables.is_dir():
        raise CompareError(f"{directory}: no tables/ here: not a report directory (rlhf report --claims) "
                           "nor a findings output directory")
    claims = _read_csv(tables / "claims.csv", CLAIMS_COLUMNS)
    seeds_path = tables / "claims_seeds.csv"
    if not seeds_path.is_file():
        raise CompareError(f"{seeds_path}: not found (reports from before claims_seeds.csv existed: run "
                           "`rlhf report <its sweeps> --claims <claims.yaml> --out <dir>` again to write it)")
    seeds = _read_csv(seeds_path, SEEDS_COLUMNS)
    if claims["row"].duplicated().any():
        raise CompareError(f"{tables / 'claims.csv'}: row id(s) given twice: "
                           f"{', '.join(map(str, claims.loc[claims['row'].duplicated(), 'row']))}")
    by_row = {}
    known = {str(r): (float(v), int(n)) for r, v, n in zip(claims["row"], claims["value"], claims["n"].fillna(0))}
    for i, r in seeds.iterrows():
        row, seed, value = str(r["row"]), r["seed"], r["value"]
        if row not in known:
            raise CompareError(f"{seeds_path}, line {i + 2}: row {row!r} is not in claims.csv")
        if pd.isna(seed) or pd.isna(value):
            raise CompareError(f"{seeds_path}, line {i + 2}: row {row!r} has no seed or no value (a torn file?)")
        vals = by_row.setdefault(row, {})
        if int(seed) in vals:
            raise CompareError(f"{seeds_path}, line {i + 2}: row {row!r}, seed {int(seed)} given twice")
        vals[int(seed)] = float(value)
    for row, vals in by_row.items():
        mean, _, _, n = t_ci(list(vals.values()))
        value, n_claims = known[row]
        if n != n_claims or not math.isclose(mean, value, rel_tol=1e-9, abs_tol=1e-12):
            raise CompareError(f"{seeds_path}: row {row!r} has {n} seed values with mean {mean:.6g}, but "
                               f"claims.csv says n={n_claims}, value {value:.6g} (the two files are not "
                               "from one report)")
    return Table(path=d, claims=claims, seeds=by_row)


def _delta(base: dict, new: dict) -> tuple[float, float, float, str]:
    """(Δ, CI low, high, method) of new − base from their per-seed values."""
    if set(base) == set(new) and len(base) >= 2:
        d, lo, hi, n = t_ci([new[s] - base[s] for s in sorted(base)])
        return d, lo, hi, f"paired t, n={n}"
    d, lo, hi, df = welch_ci(list(base.values()), list(new.values()))
    if math.isnan(lo):
        return d, lo, hi, "no CI: fewer than 2 seeds"
    return d, lo, hi, f"Welch t, n={len(base)}+{len(new)}"


def compare(base: Table, new: Table) -> tuple[list[Change], list[str], list[str]]:
    """The rows of both tables in NEW's order, and the row ids only in BASE / only in NEW."""
    b = base.claims.set_index(base.claims["row"].astype(str))
    out = []
    for _, r in new.claims.iterrows():
        row = str(r["row"])
        if row not in b.index:
            continue
        o = b.loc[row]
        if row in base.seeds and row in new.seeds:
            d, lo, hi, method = _delta(base.seeds[row], new.seeds[row])
        else:
            d, lo, hi, method = float(r["value"]) - float(o["value"]), math.nan, math.nan, \
                "one number per report (no CI)"
        differs = None if math.isnan(lo) else not (lo <= 0 <= hi)
        out.append(Change(row=row, claim=str(r["claim"]), statistic=str(r["statistic"]),
                          base_value=float(o["value"]), base_ci_low=float(o["ci_low"]), base_ci_high=float(o["ci_high"]),
                          base_verdict=str(o["verdict"]), new_value=float(r["value"]), new_ci_low=float(r["ci_low"]),
                          new_ci_high=float(r["ci_high"]), new_verdict=str(r["verdict"]), delta=d, delta_ci_low=lo,
                          delta_ci_high=hi, method=method, differs=differs))
    only_base = [str(x) for x in base.claims["row"] if str(x) not in set(new.claims["row"].astype(str))]
    only_new = [str(x) for x in new.claims["row"] if str(x) not in b.index]
    return out, only_base, only_new


def _f(v: float) -> str:
    return "–" if v is None or math.isnan(v) else f"{v:.3g}"


def _ci(lo: float, hi: float) -> str:
    return "" if math.isnan(lo) or math.isnan(hi) else f" [{_f(lo)}, {_f(hi)}]"


def summary_lines(changes: list[Change], only_base: list[str], only_new: list[str]) -> list[str]:
    with_ci = [c for c in changes if c.differs is not None]
    differ = [c for c in with_ci if c.differs]
    lines = [f"{len(differ)} of {len(with_ci)} rows with a CI differ (the 95% CI of Δ excludes 0)"
             + (f": {', '.join(c.row for c in differ)}" if differ else "")
             + f"; by chance alone about {0.05 * len(with_ci):.1f} would (the rows are not independent)."]
    flips = [c for c in changes if c.verdict_changed]
    if flips:
        parts = []
        for c in flips:
            why = ("its statistic differs" if c.differs else "its statistic does not detectably differ"
                   if c.differs is False else "no CI for its Δ")
            parts.append(f"{c.row} ({c.base_verdict} → {c.new_verdict}; Δ {_f(c.delta)}"
                         f"{_ci(c.delta_ci_low, c.delta_ci_high)}: {why})")
        lines.append(f"{len(flips)} verdict(s) changed: " + "; ".join(parts) + ".")
    else:
        lines.append("No verdict changed.")
    if only_base:
        lines.append(f"Only in the base report: {', '.join(only_base)}.")
    if only_new:
        lines.append(f"Only in the new report: {', '.join(only_new)}.")
    return lines


def to_markdown(changes: list[Change], base: Table, new: Table, only_base: list[str], only_new: list[str]) -> str:
    out = [f"Base: `{base.path}`. New: `{new.path}`.", "",
           "| row | statistic | base [95% CI] | new [95% CI] | Δ new − base [95% CI] | differs | verdict |",
           "|---|---|---|---|---|---|---|"]
    for c in changes:
        verdict = c.new_verdict if not c.verdict_changed else f"{c.base_verdict} → **{c.new_verdict}**"
        differs = "–" if c.differs is None else ("**yes**" if c.differs else "no")
        out.append(f"| {c.row} | {c.statistic.replace('|', '/')} | {_f(c.base_value)}{_ci(c.base_ci_low, c.base_ci_high)}"
                   f" | {_f(c.new_value)}{_ci(c.new_ci_low, c.new_ci_high)} | {_f(c.delta)}"
                   f"{_ci(c.delta_ci_low, c.delta_ci_high)} ({c.method}) | {differs} | {verdict} |")
    return "\n".join(out + [""] + summary_lines(changes, only_base, only_new)) + "\n"


def write(changes: list[Change], base: Table, new: Table, only_base: list[str], only_new: list[str],
          out: Path) -> dict[str, Path]:
    """compare.md and compare.csv under ``out``, each written whole or not at all."""
    from rlhf.rundir import atomic_write_text
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "compare.md", "csv": out / "compare.csv"}
    atomic_write_text(paths["md"], "# Claims compared\n\n" + to_markdown(changes, base, new, only_base, only_new))
    frame = pd.DataFrame([{**asdict(c), "verdict_changed": c.verdict_changed} for c in changes])
    atomic_write_text(paths["csv"], frame.to_csv(index=False))
    return paths
