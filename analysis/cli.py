"""`rlhf report DIR... --out DIR`: paper figures and tables from sweeps and eval records.

    rlhf report sweeps/sweep_quickstart --out reports/quickstart
    rlhf report sweeps/a sweeps/b/results.parquet runs/quickstart --out reports/all
    rlhf report findings/sweeps/* --claims experiments/findings/claims.yaml --out findings/report

Each DIR is a sweep directory collected with `rlhf sweep collect` (results.parquet or
results.csv, runs under runs/), a results table, or a single run directory. Eval records
(`rlhf eval`) are read from each run's eval/records.jsonl. Bad input (a missing, empty or
foreign directory, a sweep that was not collected) exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("report", help="paper figures and tables from sweeps and eval records",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="DIR",
                   help="sweep directory (after `rlhf sweep collect`), results.parquet/.csv, or run directory")
    p.add_argument("--out", required=True, help="output directory (figures/, tables/, report.md, report.html)")
    p.add_argument("--claims", default=None, metavar="YAML",
                   help="a claims file (experiments/findings/claims.yaml): adds the claims table "
                        "(tables/claims.{md,csv,tex}) and one figure per claim (figures/claim_<id>.*)")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    os.environ.setdefault("MPLBACKEND", "Agg")
    from .report import build_report
    rep = build_report(args.inputs, args.out, claims=args.claims)  # InputError -> exit status 2 (rlhf/cli.py)
    per_run = rep.per_run
    print(f"{len(per_run)} runs ({(per_run['state'] == 'done').sum()} done) from {', '.join(rep.data.sources)}")
    for name, paths in rep.figures.items():
        print(f"  figure {name}: {paths['pdf']} {paths['png']} {paths['csv']}")
    for name, path in rep.tables.items():
        print(f"  table {name}: {path}")
    if rep.claims:
        print(f"claims: {len(rep.claims)} rows -> {rep.tables['claims_md']}")
        for r in rep.claims:
            print(f"  {r.id}: {r.statistic}: {r.value:.4g} {r.ci_method}; {r.runs}: {r.verdict}")
    print(f"summary: {rep.summary_md} and {rep.summary_html}")
    return 0


COMPARE_DOC = """`rlhf compare BASE NEW [--out DIR]`: two claims tables row by row.

    rlhf compare findings_before/report findings/report --out findings/compare

BASE and NEW are report directories written by `rlhf report ... --claims` (or findings output
directories holding report/). For every row in both: the base and new value with their CIs,
Δ = new − base with a 95% CI (paired on the seeds both have when there are 2 or more, else Welch's t;
no CI for a row that is one number per report), whether that CI excludes 0, and the verdicts.
Prints the table; --out also writes compare.md and compare.csv. Bad input exits with status 2.
"""


def register_compare(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("compare", help="two claims tables row by row: did the statistics move?",
                              description=COMPARE_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", metavar="BASE", help="the report to compare against (rlhf report --claims --out)")
    p.add_argument("new", metavar="NEW", help="the report compared with it")
    p.add_argument("--out", default=None, help="directory for compare.md and compare.csv (default: print only)")
    p.set_defaults(func=run_compare)
    return p


def run_compare(args) -> int:
    from pathlib import Path

    from . import compare as K
    base, new = K.load_table(args.base), K.load_table(args.new)  # CompareError -> exit status 2
    changes, only_base, only_new = K.compare(base, new)
    print(K.to_markdown(changes, base, new, only_base, only_new), end="")
    if args.out:
        paths = K.write(changes, base, new, only_base, only_new, Path(args.out))
        print(f"written: {paths['md']} {paths['csv']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m rlhf_analysis.cli ...`` = ``rlhf report ...``"""
    from rlhf.cli import main as rlhf_main
    return rlhf_main(["report", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
