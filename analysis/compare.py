"""`rlhf compare BASE NEW`: two claims tables row by row. Did a change move the science?

    rlhf compare findings_before/report findings/report --out findings/compare

A verdict is a threshold on a CI, so at 5 seeds a row whose CI touches its threshold can flip
under any change that redraws the seeds (one that moves floats by rounding does: training is
chaotic). The question a code change has to answer is whether the *statistic* moved, not
whether its verdict did. For every row in both tables this gives

    Δ = new − base, with a 95% CI:
      paired by seed on the seeds both reports have, when there are at least 2: Student's t
        over the per-seed differences new_s − base_s (``results.t_ci``, the claims table's
        own interval);
      otherwise Welch's t over the two sets of per-seed values (``results.welch_ci``);
      a row with one number per report (a fit's R², a monotone row): Δ only, no CI.

and says where the CI excludes 0 ("differs"; a Δ within 1e-9 of 0, relative to the values,
never does). With m rows compared, about 0.05·m of them would differ by chance alone if
nothing had changed (fewer or more, the rows are not independent); the summary says so.
Rows whose verdict changed are listed with their Δ. A ``within_ci`` row's CI in the claims
table is its reference cell's (the method column says so), and its verdict reads that CI too: Δ is of
the row's own mean only.

BASE and NEW are report directories (``rlhf report ... --claims``: ``tables/claims.csv`` and
``tables/claims_seeds.csv``) or a findings output directory (``<out>/report``). A missing,
unreadable, torn or inconsistent table (a non-number where a number belongs, a per-seed row
that names no claims row, per-seed values whose mean is not the row's value) is an input
error (exit status 2) naming the file and, where there is one, the line.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from rlhf.config import InputError

from .claims import REF_CI
from .results import t_ci, welch_ci

CLAIMS_COLUMNS = ["claim", "row", "statistic", "value", "ci_low", "ci_high", "ci_method", "n", "verdict"]
SEEDS_COLUMNS = ["claim", "row", "seed", "value"]


class CompareError(InputError):
    """A report that cannot be compared (exit status 2): the message names the file."""


@dataclass
class Table:
    """One report's claims: ``claims`` (claims.csv) and ``seeds`` ((claim, row) -> {seed: value})."""
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


def _read_csv(path: Path, columns: list[str], numeric: dict[str, bool]) -> pd.DataFrame:
    """The table at ``path``, every cell read as text (a row id "01" or "NA" stays itself),
    then the ``numeric`` columns as numbers: an empty cell is NaN where allowed (True), else
    an error; anything else that is not a number is an error naming the line."""
    if not path.is_file():
        raise CompareError(f"{path}: not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:  # empty, torn or not a CSV
        raise CompareError(f"{path}: not a readable claims table ({type(e).__name__}: {e})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise CompareError(f"{path}: missing column(s) {', '.join(missing)} (expected {', '.join(columns)})")
    for col, empty_ok in numeric.items():
        text = df[col].str.strip()
        num = pd.to_numeric(text.mask(text == "", "nan"), errors="coerce")
        bad = df.index[num.isna() & ~(text.str.lower().isin(["", "nan"]) & empty_ok)]
        if len(bad):
            i = int(bad[0])
            raise CompareError(f"{path}, line {i + 2}: {col} {df.at[i, col]!r} is not a number"
                               + ("" if empty_ok else " (a torn file?)"))
        df[col] = num
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
    claims_path = tables / "claims.csv"
    claims = _read_csv(claims_path, CLAIMS_COLUMNS, {"value": True, "ci_low": True, "ci_high": True, "n": True})
    seeds_path = tables / "claims_seeds.csv"
    if not seeds_path.is_file():
        raise CompareError(f"{seeds_path}: not found (reports from before claims_seeds.csv existed: run "
                           "`rlhf report <its sweeps> --claims <claims.yaml> --out <dir>` again to write it)")
    seeds = _read_csv(seeds_path, SEEDS_COLUMNS, {"seed": False, "value": False})
    keys = list(zip(claims["claim"], claims["row"]))
    dup = [f"{c}/{r}" for (c, r), d in zip(keys, pd.Series(keys).duplicated()) if d]
    if dup:
        raise CompareError(f"{claims_path}: row(s) given twice: {', '.join(dup)}")
    known = {k: (float(v), 0 if math.isnan(n) else int(n)) for k, v, n in zip(keys, claims["value"], claims["n"])}
    by_row: dict = {}
    for i, r in seeds.iterrows():
        key, seed = (r["claim"], r["row"]), float(r["seed"])
        if key not in known:
            raise CompareError(f"{seeds_path}, line {i + 2}: claim {key[0]!r}, row {key[1]!r} is not in claims.csv")
        if seed != int(seed):
            raise CompareError(f"{seeds_path}, line {i + 2}: seed {r['seed']:g} is not a whole number")
        vals = by_row.setdefault(key, {})
        if int(seed) in vals:
            raise CompareError(f"{seeds_path}, line {i + 2}: row {key[1]!r}, seed {int(seed)} given twice")
        vals[int(seed)] = float(r["value"])
    for key, vals in by_row.items():
        mean, _, _, n = t_ci(list(vals.values()))
        value, n_claims = known[key]
        tol = 1e-9 * max(1.0, *(abs(v) for v in vals.values()))
        if n != n_claims or not math.isclose(mean, value, rel_tol=1e-9, abs_tol=tol):
            raise CompareError(f"{seeds_path}: row {key[1]!r} has {n} seed values with mean {mean:.6g}, but "
                               f"claims.csv says n={n_claims}, value {value:.6g} (the two files are not "
                               "from one report)")
    return Table(path=d, claims=claims, seeds=by_row)


def _delta(base: dict, new: dict) -> tuple[float, float, float, str]:
    """(Δ, CI low, high, method) of new − base from their per-seed values: paired on the
    seeds both have when there are 2 or more, else Welch's t over all of each side's."""
    common = sorted(set(base) & set(new))
    if len(common) >= 2:
        d, lo, hi, n = t_ci([new[s] - base[s] for s in common])
        return d, lo, hi, f"paired t, n={n}" + ("" if set(base) == set(new) else " (the seeds both have)")
    d, lo, hi, df = welch_ci(list(base.values()), list(new.values()))
    if math.isnan(lo):
        return d, lo, hi, "no CI: fewer than 2 seeds"
    return d, lo, hi, f"Welch t, n={len(base)}+{len(new)}"


def compare(base: Table, new: Table) -> tuple[list[Change], list[str], list[str]]:
    """The rows of both tables in NEW's order, and the row ids only in BASE / only in NEW."""
    b = {(r["claim"], r["row"]): r for _, r in base.claims.iterrows()}
    out = []
    for _, r in new.claims.iterrows():
        key = (r["claim"], r["row"])
        if key not in b:
            continue
        o = b[key]
        if key in base.seeds and key in new.seeds:
            d, lo, hi, method = _delta(base.seeds[key], new.seeds[key])
        else:
            side = ("either report" if key not in base.seeds and key not in new.seeds else
                    "the base report" if key not in base.seeds else "the new report")
            d, lo, hi, method = float(r["value"]) - float(o["value"]), math.nan, math.nan, \
                f"no per-seed values in {side}: no CI"
        scale = max([1.0] + [abs(v) for v in (float(r["value"]), float(o["value"])) if not math.isnan(v)])
        differs = None if math.isnan(lo) else (not (lo <= 0 <= hi) and abs(d) > 1e-9 * scale)
        if str(r["ci_method"]).startswith(REF_CI) or str(o["ci_method"]).startswith(REF_CI):
            method += "; the CIs shown are the reference cell's"
        out.append(Change(row=str(r["row"]), claim=str(r["claim"]), statistic=str(r["statistic"]),
                          base_value=float(o["value"]), base_ci_low=float(o["ci_low"]), base_ci_high=float(o["ci_high"]),
                          base_verdict=str(o["verdict"]), new_value=float(r["value"]), new_ci_low=float(r["ci_low"]),
                          new_ci_high=float(r["ci_high"]), new_verdict=str(r["verdict"]), delta=d, delta_ci_low=lo,
                          delta_ci_high=hi, method=method, differs=differs))
    new_keys = set(zip(new.claims["claim"], new.claims["row"]))
    only_base = [r for c, r in zip(base.claims["claim"], base.claims["row"]) if (c, r) not in new_keys]
    only_new = [r for c, r in zip(new.claims["claim"], new.claims["row"]) if (c, r) not in b]
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
            if "reference cell" in c.method:
                why += "; its verdict also reads the reference cell's CI"
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
