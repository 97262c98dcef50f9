"""``rlhf report``: every figure and table of the paper from sweeps and eval records.

    from rlhf_analysis.report import build_report
    result = build_report(["sweeps/sweep_quickstart"], "report/")

Writes, under the output directory::

    figures/<name>.pdf   vector figure          figures/<name>.png   raster (150 dpi)
    figures/<name>.csv   the values plotted in it (equal to the tables' values)
    tables/main_results.tex  booktabs, mean ± 95% CI over seeds per cell
    tables/main_results.csv  the same numbers (mean, ci_low, ci_high, n per metric; runs by state)
    tables/runs.csv          one row per run: state, error, conditions, seed, metrics
    tables/claims.{md,csv,tex}, tables/claims_seeds.csv, figures/claim_<id>.*   with ``claims`` (analysis/claims.py)
    report.md, report.html   every figure with a one-line caption, the table, runs not done
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from .data import DONE, SWITCHES, Data, load
from .results import main_table, run_metrics
from .style import paper_style, save
from .tables import to_markdown, write_tables


@dataclass
class FigureSpec:
    name: str
    caption: str
    make: Callable


@dataclass
class Report:
    out: Path
    figures: dict[str, dict[str, Path]] = field(default_factory=dict)  # name -> {pdf, png, csv}
    captions: dict[str, str] = field(default_factory=dict)
    tables: dict[str, Path] = field(default_factory=dict)
    summary_md: Path | None = None
    summary_html: Path | None = None
    data: Data | None = None
    per_run: pd.DataFrame | None = None
    table: pd.DataFrame | None = None
    open_figures: dict = field(default_factory=dict)  # name -> Figure, with keep_figures
    claims: list = field(default_factory=list)  # rlhf_analysis.claims.Row, with a claims file
    claim_figures: dict = field(default_factory=dict)  # claim id -> {pdf, png, csv}
    claims_md: str = ""


def _symbols(keys: list[str]) -> str:
    return ", ".join(SWITCHES[k][0] for k in keys if k in SWITCHES) or "the varied settings"


def figure_specs(data: Data, per_run: pd.DataFrame) -> list[FigureSpec]:
    from . import figures as F
    sw = _symbols(data.switches)
    n_seeds = per_run["seed"].nunique() if "seed" in per_run.columns else 1
    ci = "mean and 95% CI over seeds" if n_seeds > 1 else "one seed per cell (no CI)"
    return [
        FigureSpec("ablation", f"Final gold_reward, rm_score, KL, TruthfulQA MC1/MC2, toxicity (challenging prompts), "
                               f"Δ LM loss vs SFT and the toy world's stereotype bias (where measured) against {sw}; "
                               f"{ci}.",
                   lambda: F.ablation_figure(data, per_run)),
        FigureSpec("overoptimization", "gold_reward and rm_score gain over SFT against √KL for RL (per β) and best-of-n, "
                                       "with the fits d(α − β log d) and d(α − β d).",
                   lambda: F.overopt_figure(data)),
        FigureSpec("training_curves", "PPO training curves per run (EMA-smoothed; raw values faint): reward, KL, β, "
                                      "clip fraction, value loss, ptx loss, entropy.",
                   lambda: F.curves_figure(data)),
        FigureSpec("alignment_tax", "Alignment tax: change of each regression metric against SFT, and of the toy "
                                    "world's stereotype bias (where measured), γ = 0 (PPO) beside γ > 0 (PPO-ptx); "
                                    "bars: mean, dots: runs.",
                   lambda: F.alignment_tax_figure(data, per_run)),
        FigureSpec("reward_model", "Reward model held-out ranking accuracy and gold agreement against K and against "
                                   "the number of ranked comparisons.",
                   lambda: F.reward_model_figure(data)),
    ]


def build_report(inputs: list[str | os.PathLike], out: str | os.PathLike, keep_figures: bool = False,
                 claims: str | os.PathLike | None = None) -> Report:
    """Read ``inputs`` (sweep directories, results tables, run directories) and write the
    report to ``out``. ``keep_figures`` keeps the matplotlib Figures open on the result
    (``result.open_figures``) for inspection; by default they are closed after saving."""
    data = load(list(inputs))
    per_run = run_metrics(data)
    table = main_table(data, per_run)
    claims_spec = claims_rows = None
    if claims:  # read and computed before anything is written: a bad claims file leaves no half report
        from . import claims as C
        claims_spec = C.load_claims(claims)
        claims_rows = C.claims_table(claims_spec, data)
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    rep = Report(out=out, data=data, per_run=per_run, table=table)
    rep.tables = write_tables(table, per_run, data.conditions, out / "tables")
    with paper_style():
        for spec in figure_specs(data, per_run):
            fig, fdata = spec.make()
            base = out / "figures" / spec.name
            fdata.to_csv(base.with_suffix(".csv"), index=False)
            if keep_figures:
                import io
                fig.savefig(io.BytesIO(), format="png")  # draw once so that the Axes are final
                rep.open_figures[spec.name] = fig
                pdf = base.with_suffix(".pdf")
                fig.savefig(pdf)
                fig.savefig(base.with_suffix(".png"))
                paths = [pdf, base.with_suffix(".png")]
            else:
                paths = save(fig, base)
            rep.figures[spec.name] = {"pdf": paths[0], "png": paths[1], "csv": base.with_suffix(".csv")}
            rep.captions[spec.name] = spec.caption
    if claims:
        rep.claims = claims_rows
        rep.claim_figures = C.write_claim_figures(rep.claims, claims_spec, out / "figures")
        links = {cid: f"../figures/{p['png'].name}" for cid, p in rep.claim_figures.items()}
        for k, p in C.write_claims(rep.claims, claims_spec, out / "tables", links).items():
            rep.tables[f"claims_{k}"] = p
        rep.claims_md = C.to_markdown(rep.claims, claims_spec, {cid: f"figures/{p['png'].name}"
                                                                for cid, p in rep.claim_figures.items()})
    rep.summary_md, rep.summary_html = write_summary(rep)
    return rep


def not_done(per_run: pd.DataFrame) -> pd.DataFrame:
    return per_run[per_run["state"] != DONE][["run_id", "state", "error"]]


def write_summary(rep: Report) -> tuple[Path, Path]:
    data, per_run, table = rep.data, rep.per_run, rep.table
    conds = data.conditions
    metrics = [c for c in table.columns if c in {m for m in per_run.columns} and f"{c}_ci_low" in table.columns
               and table[c].notna().any()]
    bad = not_done(per_run)
    n_eval = int(per_run["has_eval"].sum()) if "has_eval" in per_run else 0
    md = ["# RLHF report", "",
          f"Inputs: {', '.join(f'`{s}`' for s in data.sources)}. {len(per_run)} runs "
          f"({(per_run['state'] == DONE).sum()} done), {n_eval} with eval records. "
          f"Varied: {', '.join(f'`{k}`' for k in conds) or 'nothing'}.", ""]
    for i, (name, paths) in enumerate(rep.figures.items(), 1):
        md += [f"## Figure {i}: {name.replace('_', ' ')}", "",
               f"![{rep.captions[name]}](figures/{paths['png'].name})", "",
               f"*Figure {i}.* {rep.captions[name]} "
               f"([PDF](figures/{paths['pdf'].name}), [data](figures/{paths['csv'].name}))", ""]
    if rep.claims_md:
        md += ["## Claims", "", "Mean over seeds, Student-t 95% interval clipped to the statistic's range; runs not "
               "done are counted, never averaged in. CSV: [tables/claims.csv](tables/claims.csv), LaTeX: "
               "[tables/claims.tex](tables/claims.tex).", "", rep.claims_md, ""]
    md += ["## Table 1: main results", "",
           "Mean ± 95% CI half-width over seeds; LaTeX: [tables/main_results.tex](tables/main_results.tex), "
           "CSV: [tables/main_results.csv](tables/main_results.csv), per run: [tables/runs.csv](tables/runs.csv).",
           "", to_markdown(table, conds, metrics), ""]
    md += ["## Runs not done", ""]
    if len(bad):
        md += ["Counted in the tables' *runs* column and marked in the figures, never averaged in.", "",
               "| run | state | error |", "|---|---|---|"]
        for _, r in bad.iterrows():
            md.append(f"| `{r['run_id']}` | {r['state']} | {str(r['error'])[:160].replace('|', '/')} |")
    else:
        md.append("None: every run is done.")
    md_path = rep.out / "report.md"
    md_path.write_text("\n".join(md) + "\n")
    # the same as a self-contained page (images by relative path)
    h = ["<!doctype html><html><head><meta charset='utf-8'><title>RLHF report</title>",
         "<style>body{font-family:sans-serif;max-width:60em;margin:auto}img{max-width:100%}"
         "table{border-collapse:collapse;font-size:90%}td,th{border-bottom:1px solid #ccc;padding:2px 6px}</style>",
         "</head><body><h1>RLHF report</h1>", f"<p>{html.escape(md[2])}</p>"]
    for i, (name, paths) in enumerate(rep.figures.items(), 1):
        cap = html.escape(rep.captions[name])
        h.append(f"<figure><img src='figures/{paths['png'].name}' alt='{cap}'><figcaption><b>Figure {i}.</b> {cap} "
                 f"(<a href='figures/{paths['pdf'].name}'>PDF</a>, <a href='figures/{paths['csv'].name}'>data</a>)"
                 "</figcaption></figure>")
    if rep.claims:
        from .claims import to_frame
        h.append("<h2>Claims</h2>")
        h.append(to_frame(rep.claims).to_html(index=False, na_rep="--", float_format=lambda v: f"{v:.4g}"))
    h.append("<h2>Table 1: main results</h2>")
    h.append(table.to_html(index=False, na_rep="--", float_format=lambda v: f"{v:.4g}"))
    h.append("<h2>Runs not done</h2>")
    h.append(bad.to_html(index=False) if len(bad) else "<p>None: every run is done.</p>")
    h.append("</body></html>")
    html_path = rep.out / "report.html"
    html_path.write_text("\n".join(h) + "\n")
    return md_path, html_path
