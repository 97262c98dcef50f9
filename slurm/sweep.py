"""Sweep files: a base config, a grid, zipped lists, seeds and a cluster profile.

A sweep file (YAML, usually ``experiments/sweep_*.yaml``)::

    name: beta-ptx                 # default: the file name without .yaml
    out_dir: sweeps                # the sweep directory is <out_dir>/<name>
    base:
      config: quickstart.yaml      # relative to the sweep file (or the working directory)
      overrides:                   # dotted keys (a mapping, or a list of "key=value")
        ppo.steps: 30
    grid:                          # cartesian product over dotted config keys
      ppo.beta: [0.01, 0.1]
      ppo.ptx_coef: [0.0, 1.0]
    zip:                           # optional: groups of equally long lists varied together
      - {rm.k: [2, 4], rm.batch_size: [16, 8]}
    seeds: [0, 1]                  # or a count: 3 = [0, 1, 2]
    max_runs: 1000
    slurm: {partition: gpu, gpus_per_node: 1, cpus_per_task: 8, mem_gb: 32, time_min: 240}
    share_stages: [pretrain, sft]  # optional: runs that agree on every key a stage depends on
                                   # build it once (<out_dir>/shared/, slurm/shared.py)

:func:`expand` turns it into :class:`RunSpec` s, each validated with
:func:`rlhf.config.from_dict`, with a stable, readable run id: the varying key=value pairs
and 8 hex digits of a hash of the resolved config (``beta=0.1,ptx_coef=0,seed=1-3f9a0c2e``).
Nothing here talks to a cluster.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


from rlhf.config import (ConfigError, InputError, RunConfig, apply_settings, check_ranges, flatten, from_dict, nest,
                         parse_override, read_yaml_file)

DEFAULT_MAX_RUNS = 1000
EXECUTORS = ("slurm", "local", "debug")
# keys of the resolved config that do not enter the run's hash: name and out_dir (set by the
# sweep), and switches that change no result (rlhf.config.NO_RESULT_KEYS) added after run ids
# existed, so that a base config turning one on keeps its sweeps' run ids (the older ones,
# e.g. threads, stay hashed: leaving them out now would rename runs)
NOT_HASHED = ("name", "out_dir", "ppo.parallel_critic")
_ABSENT = object()


class SweepError(ConfigError):
    """A problem with a sweep file or its expansion (exit status 2, nothing submitted)."""


class ClusterError(InputError):
    """The cluster cannot be reached or rejects the profile (exit status 2, nothing submitted)."""


@dataclass
class ClusterProfile:
    """Resources of one array task; names follow submitit where they exist."""

    partition: Optional[str] = None
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem_gb: Optional[float] = None
    time_min: int = 60
    nodes: int = 1
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    array_parallelism: int = 64
    signal_delay_s: int = 120  # USR2 this long before the time limit: checkpoint + requeue
    max_num_timeout: int = 3  # requeues after time limits (preemptions do not count)
    launcher: str = "auto"  # data-parallel: auto (torchrun when procs_per_node > 1) | torchrun | accelerate | none
    procs_per_node: int = 0  # data-parallel processes per task; 0 = one per GPU (gpus_per_node), at least 1
    setup: list[str] = field(default_factory=list)  # shell lines run before the job (module load ...)
    additional: dict[str, Any] = field(default_factory=dict)  # any other sbatch option

    @property
    def procs(self) -> int:
        """Data-parallel processes per array task."""
        return self.procs_per_node or max(1, self.gpus_per_node)

    def executor_parameters(self, name: str) -> dict[str, Any]:
        """Parameters for ``submitit.AutoExecutor.update_parameters``."""
        p: dict[str, Any] = {
            "name": name,
            "timeout_min": self.time_min,
            "nodes": self.nodes,
            "tasks_per_node": 1,  # one process per job; multi-GPU is launched inside the job
            "cpus_per_task": self.cpus_per_task,
            "slurm_array_parallelism": self.array_parallelism,
            "slurm_signal_delay_s": self.signal_delay_s,
        }
        if self.gpus_per_node:
            p["gpus_per_node"] = self.gpus_per_node
        if self.mem_gb is not None:
            p["mem_gb"] = self.mem_gb
        for key, sub in (("partition", "slurm_partition"), ("account", "slurm_account"),
                         ("qos", "slurm_qos"), ("constraint", "slurm_constraint")):
            if getattr(self, key):
                p[sub] = getattr(self, key)
        if self.setup:
            p["slurm_setup"] = list(self.setup)
        if self.additional:
            p["slurm_additional_parameters"] = dict(self.additional)
        return p


@dataclass
class Sweep:
    name: str
    out_dir: str
    base_config: Optional[str]  # resolved path, or None = defaults only
    base_overrides: dict[str, Any]
    grid: dict[str, list]
    zips: list[dict[str, list]]
    seeds: Optional[list[int]]
    max_runs: int
    profile: ClusterProfile
    source: Optional[str] = None  # the sweep file
    share_stages: list[str] = field(default_factory=list)  # built once per group of runs (slurm/shared.py)

    @property
    def directory(self) -> Path:
        return Path(self.out_dir) / self.name

    def varying_keys(self) -> list[str]:
        keys = list(self.grid)
        for z in self.zips:
            keys += list(z)
        if self.seeds is not None:
            keys.append("seed")
        return keys

    def to_dict(self) -> dict:
        return {"name": self.name, "out_dir": self.out_dir,
                "base": {"config": self.base_config, "overrides": self.base_overrides},
                "grid": self.grid, "zip": self.zips, "seeds": self.seeds, "max_runs": self.max_runs,
                "slurm": {k: v for k, v in self.profile.__dict__.items()}, "source": self.source,
                "share_stages": self.share_stages}


@dataclass
class RunSpec:
    run_id: str
    cell: dict[str, Any]  # the varying keys and their values for this run
    config: RunConfig


# ----------------------------------------------------------------------------- loading

_TOP_KEYS = {"name", "out_dir", "base", "grid", "zip", "seeds", "max_runs", "slurm", "cluster", "share_stages"}
_KNOWN_CONFIG_KEYS = set(flatten(RunConfig()))


def _check_key(key: Any, where: str) -> str:
    if not isinstance(key, str) or not key:
        raise SweepError(f"{where}: keys must be dotted config keys such as ppo.beta, got {key!r}")
    if key not in _KNOWN_CONFIG_KEYS:
        near = difflib.get_close_matches(key, sorted(_KNOWN_CONFIG_KEYS), n=3)
        hint = f" (did you mean {', '.join(near)}?)" if near else " (see rlhf/config.py for every key)"
        raise SweepError(f"{where}: unknown config key '{key}'{hint}")
    return key


def _values(key: str, vals: Any, where: str) -> list:
    if not isinstance(vals, list):
        raise SweepError(f"{where}.{key}: expected a list of values, got {vals!r}")
    if not vals:
        raise SweepError(f"{where}.{key}: empty list of values (the grid would have no runs)")
    return vals


def _overrides(obj: Any, where: str) -> dict[str, Any]:
    if obj is None:
        return {}
    out: dict[str, Any] = {}
    if isinstance(obj, list):
        for item in obj:
            if not isinstance(item, str):
                raise SweepError(f"{where}: expected 'key=value' strings, got {item!r}")
            k, v = parse_override(item)
            out[k] = v
    elif isinstance(obj, dict):
        def walk(d: dict, prefix: str) -> None:
            for k, v in d.items():
                key = f"{prefix}{k}"
                if isinstance(v, dict):
                    walk(v, key + ".")
                else:
                    out[key] = v
        walk(obj, "")
    else:
        raise SweepError(f"{where}: expected a mapping of dotted keys or a list of key=value, got {obj!r}")
    for k in out:
        _check_key(k, where)
    return out


# Other spellings of ClusterProfile fields (submitit's and sbatch's names).
_PROFILE_ALIASES = {"gpus": "gpus_per_node", "cpus": "cpus_per_task", "time": "time_min", "timeout_min": "time_min",
                    "mem": "mem_gb", "parallelism": "array_parallelism"}
_LAUNCHERS = ("auto", "torchrun", "accelerate", "none")
# (key, predicate, what it must be): checked by rlhf.config.check_ranges, like the run config's.
_PROFILE_RANGES: list[tuple[str, Any, str]] = [
    *((k, lambda v: v >= 0, ">= 0") for k in ("gpus_per_node", "signal_delay_s", "max_num_timeout", "procs_per_node")),
    *((k, lambda v: v >= 1, ">= 1") for k in ("cpus_per_task", "time_min", "array_parallelism")),
    ("nodes", lambda v: v == 1, "1 (multi-node jobs are not supported; use gpus_per_node on one node)"),
    ("mem_gb", lambda v: v is None or v > 0, "a positive number of GB or none"),
    ("launcher", lambda v: v in _LAUNCHERS, " or ".join(_LAUNCHERS)),
]


def _profile(obj: Any) -> ClusterProfile:
    """The ``slurm:`` section, read by the run config's typed mechanism (rlhf/config.py)."""
    if obj is None:
        return ClusterProfile()
    if not isinstance(obj, dict):
        raise SweepError(f"slurm: expected a mapping (partition, gpus_per_node, ...), got {obj!r}")
    obj = {k: ([v] if _PROFILE_ALIASES.get(k, k) == "setup" and isinstance(v, str) else v) for k, v in obj.items()}
    prof = ClusterProfile()
    apply_settings(prof, obj, prefix="slurm.", error=SweepError, what="slurm setting", aliases=_PROFILE_ALIASES)
    check_ranges(prof.__dict__, _PROFILE_RANGES, SweepError, prefix="slurm.")
    if prof.gpus_per_node and prof.procs_per_node > prof.gpus_per_node:
        raise SweepError(f"slurm.procs_per_node={prof.procs_per_node} exceeds gpus_per_node={prof.gpus_per_node}: "
                         f"one process per GPU at most")
    return prof


def load_sweep(path: str | Path, overrides: Optional[list[str]] = None, out_dir: Optional[str] = None,
               max_runs: Optional[int] = None) -> Sweep:
    """Read and check a sweep file. ``overrides`` (key=value) are added to the base config."""
    p = Path(path)
    data = read_yaml_file(p, SweepError, "sweep file")
    return parse_sweep(data, source=p, overrides=overrides, out_dir=out_dir, max_runs=max_runs)


def parse_sweep(data: Any, source: Optional[Path] = None, overrides: Optional[list[str]] = None,
                out_dir: Optional[str] = None, max_runs: Optional[int] = None) -> Sweep:
    if not isinstance(data, dict):
        raise SweepError("a sweep file must be a mapping with base, grid, seeds, slurm ...")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise SweepError(f"sweep file: unknown section(s) {sorted(unknown)} (known: {sorted(_TOP_KEYS)})")
    name = str(data.get("name") or (source.stem if source else "sweep"))
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+=,-]*", name):
        raise SweepError(f"name={name!r}: use letters, digits and . _ - + = , only")

    base = data.get("base") or {}
    if isinstance(base, str):
        base = {"config": base}
    if not isinstance(base, dict) or set(base) - {"config", "overrides"}:
        raise SweepError("base: expected a mapping with 'config' (a YAML path) and/or 'overrides'")
    base_config = None
    if base.get("config"):
        cand = Path(str(base["config"]))
        tries = [cand] if cand.is_absolute() else ([source.parent / cand] if source else []) + [cand]
        found = next((t for t in tries if t.is_file()), None)
        if found is None:
            raise SweepError(f"base.config: file not found: {base['config']} (looked at {', '.join(map(str, tries))})")
        base_config = str(found.resolve())
    base_overrides = _overrides(base.get("overrides"), "base.overrides")
    for o in overrides or []:
        k, v = parse_override(o)
        base_overrides[_check_key(k, "override")] = v

    grid_raw = data.get("grid")
    if grid_raw is None:
        grid_raw = {}
    if not isinstance(grid_raw, dict):
        raise SweepError(f"grid: expected a mapping of dotted keys to lists of values, got {grid_raw!r}")
    grid = {_check_key(k, "grid"): _values(k, v, "grid") for k, v in grid_raw.items()}

    zips_raw = data.get("zip") or []
    if isinstance(zips_raw, dict):
        zips_raw = [zips_raw]
    if not isinstance(zips_raw, list):
        raise SweepError("zip: expected a list of groups, each a mapping of keys to equally long lists")
    zips = []
    for i, group in enumerate(zips_raw):
        if not isinstance(group, dict) or not group:
            raise SweepError(f"zip[{i}]: expected a non-empty mapping of keys to equally long lists")
        g = {_check_key(k, f"zip[{i}]"): _values(k, v, f"zip[{i}]") for k, v in group.items()}
        lengths = {k: len(v) for k, v in g.items()}
        if len(set(lengths.values())) > 1:
            raise SweepError(f"zip[{i}]: lists must have the same length, got {lengths}")
        zips.append(g)

    seeds = data.get("seeds")
    if seeds is not None:
        if isinstance(seeds, int) and not isinstance(seeds, bool):
            if seeds < 1:
                raise SweepError(f"seeds: a count must be >= 1, got {seeds}")
            seeds = list(range(seeds))
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                                for s in seeds):
            raise SweepError(f"seeds: expected a non-empty list of integers or a count, got {data.get('seeds')!r}")
        if len(set(seeds)) != len(seeds):
            raise SweepError(f"seeds: repeated values in {seeds}")

    all_keys = list(grid) + [k for z in zips for k in z] + (["seed"] if seeds is not None else [])
    dup = sorted({k for k in all_keys if all_keys.count(k) > 1})
    if dup:
        raise SweepError(f"key(s) {dup} varied twice (grid, zip and seeds must not share keys)")
    if not all_keys:
        raise SweepError("empty grid: nothing varies (give a grid, zip lists or seeds)")

    mr = data.get("max_runs", DEFAULT_MAX_RUNS) if max_runs is None else max_runs
    if isinstance(mr, bool) or not isinstance(mr, int) or mr < 1:
        raise SweepError(f"max_runs: expected a positive integer, got {mr!r}")
    prof = _profile(data.get("slurm", data.get("cluster")))
    share = data.get("share_stages") or []
    from .shared import SHAREABLE
    if not isinstance(share, list) or any(x not in SHAREABLE for x in share):
        raise SweepError(f"share_stages: expected a list of {', '.join(SHAREABLE)}, got {data.get('share_stages')!r}")
    where = out_dir or data.get("out_dir") or "sweeps"
    if not isinstance(where, (str, Path)):
        raise SweepError(f"out_dir: expected a directory path, got {where!r}")
    return Sweep(name=name, out_dir=str(where), base_config=base_config,
                 base_overrides=base_overrides, grid=grid, zips=zips, seeds=seeds, max_runs=mr, profile=prof,
                 source=str(source) if source else None, share_stages=list(share))


# ----------------------------------------------------------------------------- expansion

def n_runs(sweep: Sweep) -> int:
    n = 1
    for v in sweep.grid.values():
        n *= len(v)
    for z in sweep.zips:
        n *= len(next(iter(z.values())))
    if sweep.seeds is not None:
        n *= len(sweep.seeds)
    return n


def cells(sweep: Sweep) -> list[dict[str, Any]]:
    """Every combination, in a stable order (grid keys as written, then zips, then seeds)."""
    axes: list[list[dict[str, Any]]] = []
    for k, vals in sweep.grid.items():
        axes.append([{k: v} for v in vals])
    for z in sweep.zips:
        n = len(next(iter(z.values())))
        axes.append([{k: z[k][i] for k in z} for i in range(n)])
    if sweep.seeds is not None:
        axes.append([{"seed": s} for s in sweep.seeds])
    out = []
    for combo in itertools.product(*axes):
        cell: dict[str, Any] = {}
        for part in combo:
            cell.update(part)
        out.append(cell)
    return out


def config_hash(cfg: RunConfig) -> str:
    """8 hex digits of the resolved config's keys that differ from their defaults (the
    ``NOT_HASHED`` keys never count): a key added to the code at its default changes no run
    id, so a resubmitted sweep finds its finished runs."""
    defaults = flatten(RunConfig())
    flat = {k: v for k, v in flatten(cfg).items() if k not in NOT_HASHED and v != defaults.get(k, _ABSENT)}
    blob = json.dumps(flat, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha1(blob.encode()).hexdigest()[:8]


def _short_names(keys: list[str]) -> dict[str, str]:
    """ppo.beta -> beta, unless two varying keys end the same way (then the full key)."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _fmt(v: Any) -> str:
    if v is None:
        s = "none"
    elif isinstance(v, bool):
        s = str(v).lower()
    elif isinstance(v, float):
        s = f"{v:g}"
    elif isinstance(v, (list, tuple)):
        s = "+".join(_fmt(x) for x in v)
    else:
        s = str(v)
        if "/" in s:
            s = s.rstrip("/").rsplit("/", 1)[-1]  # a path: its last part
    s = re.sub(r"[^A-Za-z0-9._+-]", "_", s)
    return s[:24] or "_"


def run_id_for(cell: dict[str, Any], cfg: RunConfig, short: dict[str, str]) -> str:
    readable = ",".join(f"{short[k]}={_fmt(v)}" for k, v in cell.items())
    return f"{readable[:150]}-{config_hash(cfg)}"


def expand(sweep: Sweep) -> list[RunSpec]:
    """All runs of the sweep, each validated; raises SweepError before anything is submitted."""
    n = n_runs(sweep)
    if n > sweep.max_runs:
        raise SweepError(f"the sweep has {n} runs, more than max_runs={sweep.max_runs} "
                         f"(raise max_runs in the sweep file or pass --max-runs)")
    base_data: dict = {}
    if sweep.base_config:
        base_data = read_yaml_file(sweep.base_config, SweepError, "base.config") or {}
        if not isinstance(base_data, dict):
            raise SweepError(f"base.config {sweep.base_config}: the top level must be a mapping")
    short = _short_names(sweep.varying_keys())
    runs_dir = str(sweep.directory / "runs")
    specs: list[RunSpec] = []
    seen: dict[str, dict] = {}
    for cell in cells(sweep):
        flat = dict(sweep.base_overrides)
        flat.update(cell)
        try:
            cfg = from_dict(_merge(base_data, nest(flat)))
        except ConfigError as e:
            raise SweepError(f"run {_cell_text(cell)}: {e}") from None
        procs = sweep.profile.procs
        if procs > 1 and sweep.profile.launcher != "none" and (cfg.ppo.batch_size % procs
                                                               or cfg.ppo.minibatch_size % procs):
            raise SweepError(f"run {_cell_text(cell)}: ppo.batch_size={cfg.ppo.batch_size} and ppo.minibatch_size="
                             f"{cfg.ppo.minibatch_size} must divide by the {procs} data-parallel processes")
        if procs > 1 and sweep.profile.launcher != "none" and cfg.ppo.rounds > 1:
            raise SweepError(f"run {_cell_text(cell)}: ppo.rounds > 1 runs in one process only "
                             f"(set slurm.procs_per_node: 1)")
        run_id = run_id_for(cell, cfg, short)
        if run_id in seen:
            raise SweepError(f"runs {_cell_text(seen[run_id])} and {_cell_text(cell)} resolve to the same config")
        seen[run_id] = cell
        cfg.name = run_id
        cfg.out_dir = runs_dir
        specs.append(RunSpec(run_id=run_id, cell=cell, config=cfg))
    return specs


def _merge(base: dict, extra: dict) -> dict:
    """Deep-merge two nested config mappings (``extra`` wins)."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _cell_text(cell: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in cell.items())


__all__ = ["Sweep", "RunSpec", "ClusterProfile", "SweepError", "ClusterError", "load_sweep", "parse_sweep",
           "expand", "cells", "n_runs", "config_hash", "EXECUTORS", "DEFAULT_MAX_RUNS", "nest"]
