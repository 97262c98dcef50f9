"""`rlhf sweep`: submit a sweep file, follow it, collect its results.

    rlhf sweep FILE [key=value ...] [--executor slurm|local|debug] [--retry-failed] [--dry-run]
                    [--max-runs N] [--out-dir DIR]
    rlhf sweep status DIR [--all]
    rlhf sweep collect DIR [--all] [--out PATH]

Registered through the entry point group ``rlhf.commands`` (pyproject.toml).
Bad input (sweep file, configs, too many runs, unreachable cluster) exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlhf.cli import add_overrides
from rlhf.config import InputError

from .sweep import EXECUTORS

USAGE = """\
rlhf sweep FILE [key=value ...] [--executor slurm|local|debug] [--retry-failed] [--dry-run]
       rlhf sweep status DIR [--all]
       rlhf sweep collect DIR [--all] [--out PATH]"""


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="FILE|status|collect",
                   help="a sweep file (e.g. experiments/sweep_quickstart.yaml) to submit, or status/collect")
    p.add_argument("rest", nargs="*", metavar="DIR", help="after status/collect: the sweep directory (<out_dir>/<name>)")
    add_overrides(p, "ppo.steps=30")  # added to the base config of every run
    g = p.add_argument_group("submitting")
    g.add_argument("--executor", choices=EXECUTORS, default="slurm",
                   help="slurm (default): submit one job array and return; local: subprocesses on this machine, "
                        "waits; debug: in this process, one run after the other, waits")
    g.add_argument("--retry-failed", action="store_true", help="also resubmit failed/diverged/interrupted runs")
    g.add_argument("--dry-run", action="store_true", help="expand, validate and list what would be submitted")
    g.add_argument("--max-runs", type=int, default=None,
                   help="refuse sweeps with more runs (default: the file's max_runs, else 1000)")
    g.add_argument("--out-dir", default=None, help="parent of the sweep directory (default: the file's out_dir)")
    g = p.add_argument_group("status and collect")
    g.add_argument("--all", action="store_true", help="also runs from earlier versions of the sweep file")
    g.add_argument("--out", default=None, help="collect: output path without suffix (default: DIR/results)")


def _sweep_dir(path: str) -> Path:
    from .records import is_sweep_dir
    p = Path(path)
    if not is_sweep_dir(p):
        raise InputError(f"{p} is not a sweep directory (no manifest.json): pass <out_dir>/<sweep name>")
    return p


def _run(args) -> int:
    if args.target in ("status", "collect") and not Path(args.target).is_file():
        if len(args.rest) != 1 or args.overrides:
            raise InputError(f"usage: rlhf sweep {args.target} DIR (no key=value settings)")
        sdir = _sweep_dir(args.rest[0])
        if args.target == "status":
            from .report import status_table
            _, text = status_table(sdir, include_all=args.all)
            print(text)
            return 0
        from .report import collect
        df, pq, csv = collect(sdir, include_all=args.all, out=Path(args.out) if args.out else None)
        print(f"{len(df)} runs -> {pq} and {csv}")
        return 0
    from .submit import submit
    from .sweep import load_sweep
    if args.rest:
        raise InputError(f"rlhf sweep FILE: unexpected {' '.join(args.rest)} (settings are key=value)")
    sweep = load_sweep(args.target, overrides=args.overrides, out_dir=args.out_dir, max_runs=args.max_runs)
    sub = submit(sweep, executor=args.executor, retry_failed=args.retry_failed, dry_run=args.dry_run)
    if args.executor != "slurm" and any(v != "done" for v in sub.results.values()):
        return 1
    return 0


def register(sub) -> None:
    p = sub.add_parser("sweep", help="submit a sweep of runs to SLURM (or locally); status; collect",
                       usage=USAGE, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(func=_run)


def main(argv: list[str] | None = None) -> int:
    """``python -m rlhf_slurm.cli ...`` = ``rlhf sweep ...``"""
    from rlhf.cli import main as rlhf_main
    return rlhf_main(["sweep", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
