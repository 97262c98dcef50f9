"""`rlhf eval PATH [--suite ...]`: the evaluation suite as a subcommand.

Registered through the entry point group ``rlhf.commands`` (``eval = "rlhf_eval.cli:register"``);
also runnable alone: ``python -m rlhf_eval.cli PATH ...``. Exit status: 0 when every metric
succeeded, 2 for bad input (not a model, missing dataset, unknown task or scorer, bad
setting) or when any metric recorded an error, 1 for an unexpected crash.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from rlhf.cli import add_overrides

from .settings import SUITES


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval", help="evaluate checkpoints: truthfulness, toxicity, alignment tax, over-optimisation, bias",
        description="Evaluate a checkpoint, a run directory (every checkpoint in it, or those named with "
                    "--checkpoints) or any Hugging Face causal-LM name or path. Writes one record per "
                    "(checkpoint, metric) to <run dir>/eval/records.jsonl as each metric finishes.")
    p.add_argument("path", help="checkpoint folder, run directory, HF model name/path, or a named source "
                                "(smollm2-135m-instruct)")
    p.add_argument("--suite", action="append", default=None,
                   help=f"suites to run, repeatable or comma-separated (default: all that apply): {', '.join(SUITES)}")
    p.add_argument("--checkpoints", default=None,
                   help="comma-separated checkpoint labels of a run (pretrain,sft,ppo/kl_2.0,ppo)")
    p.add_argument("--out", default=None, help="directory for eval/records.jsonl (default: the run directory, "
                                               "else runs/eval/<name>)")
    p.add_argument("--settings", default=None, help="YAML file of eval settings")
    add_overrides(p, "tox_k=5")
    p.add_argument("--data-dir", default=None, help="local datasets directory (default: $RLHF_DATA_DIR, "
                                                    "else ./shared/data or ../shared/data when there, else the hub)")
    p.add_argument("--no-write", action="store_true", help="print the records, do not append them")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from rlhf.errors import InputError  # every eval error derives from it (rlhf/errors.py)

    from .settings import make_settings
    from .suite import evaluate, records_table

    bad_input = InputError
    created = _dirs_created_by(args)
    rc = _run(args, bad_input, evaluate, records_table, make_settings)
    if rc == 2:
        _remove_new_dirs(created)
    return rc


def _dirs_created_by(args) -> list:
    """Directories this invocation would create for its records (the default
    ``runs/eval/<model>/`` and its parents) that do not exist yet."""
    from pathlib import Path

    from .suite import _safe_name
    if args.out or Path(args.path).exists():
        return []
    out = Path("runs") / "eval" / _safe_name(args.path)
    return [p for p in (out, out.parent, out.parent.parent) if not p.exists()]


def _remove_new_dirs(created: list) -> None:
    """A failed evaluation of a model that never loaded leaves nothing behind: remove the
    directories it created when they hold no record with a value."""
    import shutil

    from rlhf.rundir import read_jsonl
    for d in created:  # deepest first
        if not d.is_dir():
            continue
        rows = [r for f in d.rglob("records.jsonl") for r in read_jsonl(f)]
        if any(r.get("value") is not None for r in rows):
            return
        if d == created[0]:
            shutil.rmtree(d, ignore_errors=True)
        else:
            try:
                d.rmdir()
            except OSError:
                return


def _run(args, bad_input, evaluate, records_table, make_settings) -> int:
    try:
        overrides = list(args.overrides)
        if args.data_dir:
            overrides.append(f"data_dir={args.data_dir}")
        settings = make_settings(overrides, args.settings)
        suites = [x.strip() for s in (args.suite or []) for x in s.split(",") if x.strip()] or None
        cps = [c.strip() for c in args.checkpoints.split(",") if c.strip()] if args.checkpoints else None
        if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
            raise bad_input(f"--out {args.out} exists and is not a directory")  # before any model loads

        def echo(r):
            if r.get("error"):
                print(f"[{r['checkpoint_label']}] {r['suite']}/{r['metric']} {r['subset']}: ERROR {r['error']}",
                      file=sys.stderr, flush=True)
            else:
                ci = f" [{r['ci_low']:.4g}, {r['ci_high']:.4g}]" if r.get("ci_low") is not None else ""
                d = f" (delta {r['delta_vs_ref']:+.4g})" if r.get("delta_vs_ref") is not None else ""
                v = "n/a" if r.get("value") is None else f"{r['value']:.4g}"
                print(f"[{r['checkpoint_label']}] {r['suite']}/{r['metric']} {r['subset']}: {v}{ci}{d}", flush=True)

        records = evaluate(args.path, suites, settings, cps, args.out, write=not args.no_write,
                           progress=not args.quiet, echo=echo)
    except bad_input as e:
        print(f"rlhf eval: error: {e}", file=sys.stderr)
        return 2
    if not records:
        print("rlhf eval: no suite could run here, so no records (the notes above say why)")
        return 0
    import pandas as pd
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_rows", 500):
        print(records_table(records).to_string(index=False))
    errors = [r for r in records if r.get("error")]
    if errors:
        print(f"rlhf eval: {len(errors)} metric(s) failed; see the 'error' field of their records", file=sys.stderr)
        return 2
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    from rlhf.cli import parse_args
    parser = argparse.ArgumentParser(prog="rlhf")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parse_args(parser, ["eval"] + list(sys.argv[1:] if argv is None else argv))
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
