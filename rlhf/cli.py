"""The `rlhf` console command.

    rlhf run CONFIG [key=value ...] [--force]     run every stage into one run directory (locked
                                                  while it runs; --force builds beside the old result)
                                                  (SIGTERM/SIGUSR1: PPO checkpoints, then exits 128+sig;
                                                  the same command resumes)
    rlhf config CONFIG [key=value ...]            print the resolved config
    rlhf config --keys                            every key: default, range, meaning (docs/config.md)
    rlhf eval | sweep | findings | report | compare ...   plugins (eval/, slurm/, analysis/)

Plugins register through the entry-point group ``rlhf.commands`` so that the training
core never imports eval/, slurm/ or analysis/. Every subcommand that takes settings (run,
config, eval, sweep) reads them the same way: bare ``key=value`` anywhere on the line, or
``--set key=value`` (:func:`parse_args`). Bad input (config, data, a locked run directory, an
OS error such as a read-only or full out_dir) exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from importlib.metadata import entry_points

from .config import InputError, dump_yaml, keys_markdown, load_config
from .heap import skip_exit_collection

EXIT_BAD_INPUT = 2


# What the libraries print, by environment (read when they are imported, inherited by the runs
# that a sweep or the findings suite starts): quiet, or their defaults with --verbose.
_QUIET_ENV = {"TRANSFORMERS_VERBOSITY": ("error", "warning"), "HF_HUB_DISABLE_PROGRESS_BARS": ("1", "0"),
              "HF_DATASETS_DISABLE_PROGRESS_BARS": ("1", "0")}


def library_output(verbose: bool = False) -> None:
    """Without ``verbose`` (every ``rlhf`` command without ``--verbose``) transformers and
    datasets log errors only and the hub draws no progress bars (``Loading weights``,
    ``Writing model shards``, downloads): each long stage shows its own one bar and its
    summary lines. ``verbose`` brings the libraries' output back. Set before the libraries
    are imported; applied to them as well when they already are."""
    for key, (quiet, loud) in _QUIET_ENV.items():
        os.environ[key] = loud if verbose else quiet
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.utils as hub
        (hub.enable_progress_bars if verbose else hub.disable_progress_bars)()
    if "transformers" in sys.modules:
        from transformers.utils import logging as tlog
        (tlog.set_verbosity_warning if verbose else tlog.set_verbosity_error)()
        (tlog.enable_progress_bar if verbose else tlog.disable_progress_bar)()


def _cmd_run(args) -> int:
    from .pipeline import run_pipeline
    from .stop import StopRequested, cli_handlers
    cfg = load_config(args.config, args.overrides)
    try:
        with cli_handlers():
            run_pipeline(cfg, force=args.force, run_dir=args.run_dir, argv=sys.argv)
    except StopRequested as e:
        print(f"stopped: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted: the run directory says 'interrupted'; the unfinished stage was discarded",
              file=sys.stderr)
        return 130
    except FloatingPointError as e:  # rlhf.errors.Diverged, before main's InputError handler
        print(f"diverged: {e}", file=sys.stderr)
        return 1
    return 0


def _cmd_config(args) -> int:
    if args.keys:
        print(keys_markdown(), end="")
        return 0
    print(dump_yaml(load_config(args.config, args.overrides)), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlhf", description="RLHF research harness (InstructGPT recipe)")
    p.add_argument("--verbose", action="store_true",
                   help="show the libraries' own logs, warnings and progress bars (transformers, datasets); "
                        "may stand anywhere on the line")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the stages of a config (pretrain, sft, rm, ppo)")
    r.add_argument("config", help="YAML config, e.g. experiments/quickstart.yaml")
    add_overrides(r, "rm.k=9")
    r.add_argument("--force", action="store_true", help="redo stages that are already done")
    r.add_argument("--run-dir", default=None, help="run directory (default: <out_dir>/<name>)")
    r.set_defaults(func=_cmd_run)
    c = sub.add_parser("config", help="print the resolved config")
    c.add_argument("config", nargs="?", help="YAML config (none: the defaults)")
    c.add_argument("--keys", action="store_true", help="print every key with its default, range and meaning "
                   "(markdown; docs/config.md is this output)")
    add_overrides(c, "rm.k=9")
    c.set_defaults(func=_cmd_config)
    for ep in sorted(entry_points(group="rlhf.commands"), key=lambda e: e.name):
        try:
            ep.load()(sub)
        except Exception as e:  # noqa: BLE001 - a broken plugin must not break `rlhf run`
            print(f"warning: subcommand '{ep.name}' unavailable: {type(e).__name__}: {e}", file=sys.stderr)
    return p


def add_overrides(p: argparse.ArgumentParser, example: str) -> None:
    """The one override syntax of every subcommand that takes settings: bare ``key=value``
    words anywhere on the line (collected by :func:`parse_args`), or ``--set key=value``."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"a setting, e.g. {example}; the same as a bare {example} anywhere on the line (repeatable)")


def _value_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Option strings of the chosen subcommand that take a value (their next word is theirs)."""
    out: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sub = next((action.choices[w] for w in argv if w in action.choices), None)
            if sub is not None:
                out |= _value_options(sub, [])
        elif action.option_strings and action.nargs != 0:
            out.update(action.option_strings)
    return out


# key=value with a dotted key; a path with '=' in it (a sweep's run id) has a '/' before it or exists
_OVERRIDE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*=")


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None):
    """Parse ``argv``. Every ``key=value`` word (a dotted key; not an option's value, not an
    existing path) is a setting override, wherever it stands (before or after positionals, after ``--force``): they are
    appended to ``args.overrides`` after the ``--set`` ones. A subcommand without settings
    refuses them."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--verbose" in argv:  # a global option, accepted anywhere on the line
        argv = ["--verbose"] + [w for w in argv if w != "--verbose"]
    takes_value = _value_options(parser, argv)
    over, rest = [], []
    for i, w in enumerate(argv):
        prev = argv[i - 1] if i else ""
        if _OVERRIDE.match(w) and prev not in takes_value and not os.path.exists(w):
            over.append(w)
        else:
            rest.append(w)
    args = parser.parse_args(rest)
    if over:
        if not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(over)} (this subcommand takes no key=value settings)")
        args.overrides = list(args.overrides or []) + over
    return args


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    library_output(verbose="--verbose" in argv)  # before the plugins import the libraries
    parser = build_parser()
    args = parse_args(parser, argv)
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:  # read-only or full disk, a file where a directory should be, a name too long
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e} (errno {e.errno}); the run directory's finished stages are "
              f"unchanged", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:
        if type(e).__name__ == "SafetensorError" and "I/O error" in str(e):  # safetensors' own OS errors
            print(f"error: writing model weights failed: {e}; the run directory's finished stages are unchanged",
                  file=sys.stderr)
            return EXIT_BAD_INPUT
        raise


def console() -> None:
    """The ``rlhf`` command (and ``python -m rlhf.cli``): :func:`main`, then exit without the
    interpreter's final full garbage collection (about 1 s after a run: rlhf/heap.py)."""
    rc = main()
    skip_exit_collection()
    sys.exit(rc)


if __name__ == "__main__":
    console()
