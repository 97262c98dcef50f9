"""Shared stages: runs of a sweep that agree on every key a stage depends on build it once.

A sweep file may say ``share_stages: [pretrain, sft]`` (any of pretrain, sft, classifier, rm, ppo).
For each listed stage, :func:`rlhf.config.stage_hash` names its result (the keys it
depends on, ``rlhf.config.stage_keys``). The stage is built once per hash in a build
directory ``<out_dir>/shared/<stage>-<hash>/`` (a run directory of its own, next to the
sweeps of the same ``out_dir``, so sweeps of one suite share too), and each run gets a
copy of it, by hard links where the file system allows, before its pipeline starts; the
pipeline then skips it (its ``DONE`` file is there). The toy ``world/`` comes along with
the first shared stage, and ``comparisons.jsonl`` with ``rm``.

The first run of a group takes an exclusive lock on the build directory and builds the
stage; the others block on the lock, then copy. :func:`build_order` orders a list of runs
so that the builders of each group start before the runs that only copy (submission and
``rlhf findings`` start them in that order). Nothing here imports torch before a stage has to be built.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path
from typing import Iterable

from rlhf.config import STAGES as PIPELINE_ORDER  # the pipeline's order (rlhf.config imports no torch)
from rlhf.config import built_from

SHAREABLE = PIPELINE_ORDER
EXTRA_FILES = {"rm": ("comparisons.jsonl",), "ppo": ("comparisons.jsonl",)}  # ppo.rounds > 1 adds to it


def shared_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "shared"


def link_tree(src: Path, dst: Path) -> None:
    """Copy the directory ``src`` to ``dst`` (which must not exist) with hard links where
    possible (a plain copy across file systems); built under ``dst``.tmp and renamed."""
    tmp = dst.with_name(dst.name + ".linktmp")
    shutil.rmtree(tmp, ignore_errors=True)

    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)
    shutil.copytree(src, tmp, copy_function=link, symlinks=True)
    os.replace(tmp, dst)


def link_file(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.linktmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def _done(path: Path, stage: str) -> bool:
    return (path / stage / "DONE").exists()


def _bring(src_run: Path, dst_run: Path, stage: str) -> None:
    """Copy ``stage`` (+ world/, + its extra files) from one run directory to another,
    skipping what the destination has already."""
    for name in ("world", stage):
        if (src_run / name / "DONE").exists() and not (dst_run / name).exists():
            link_tree(src_run / name, dst_run / name)
    for f in EXTRA_FILES.get(stage, ()):  # the later stage's version wins (iterated RLHF appends rounds)
        if (src_run / f).exists() and (not (dst_run / f).exists()
                                       or os.stat(src_run / f).st_ino != os.stat(dst_run / f).st_ino):
            link_file(src_run / f, dst_run / f)


def build_stages(cfg, stage: str) -> list[str]:
    """The stages a shared build of ``stage`` runs, in pipeline order: ``stage`` and those it
    is built from. The classifier only where the run lists it (a run rewarded by its RM has
    none), and never for a stage that is not built from it: a shared ``rm`` must not carry a
    classifier whose keys its hash does not cover."""
    need = set(built_from(stage)) | {stage}  # its stage_hash covers their keys
    return [s for s in PIPELINE_ORDER if s in need and (s != "classifier" or s in cfg.stages)]


def provide_shared_stages(cfg, run_dir: str | Path, shared: str | Path, stages: Iterable[str],
                          log=print) -> list[str]:
    """Put every stage of ``stages`` that ``cfg`` runs into ``run_dir``, building it once per
    stage hash under ``shared`` (blocking while another process builds it). Returns the
    stages brought in. Stages already done in ``run_dir`` are left as they are."""
    from rlhf.config import ConfigError, stage_hash
    stages = [s for s in PIPELINE_ORDER if s in set(stages) and s in cfg.stages]
    run_dir, shared = Path(run_dir), Path(shared)
    run_dir.mkdir(parents=True, exist_ok=True)
    shared.mkdir(parents=True, exist_ok=True)
    got = []
    for stage in stages:
        if _done(run_dir, stage):
            continue
        h = stage_hash(cfg, stage)
        build = shared / f"{stage}-{h}"
        with open(shared / f"{stage}-{h}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # the first run builds; the others wait here
            if not _done(build, stage):
                # earlier stages this run has already (shared or done): start the build from them
                build.mkdir(parents=True, exist_ok=True)
                for earlier in build_stages(cfg, stage)[:-1]:
                    _bring(run_dir, build, earlier)
                # The build directory only ever holds stages whose keys agree with this run's
                # (same hash); another run's config.yaml there would differ in other keys.
                (build / "config.yaml").unlink(missing_ok=True)
                from dataclasses import replace

                from rlhf.pipeline import run_pipeline
                sub = replace(cfg, name=build.name, out_dir=str(shared), stages=build_stages(cfg, stage))
                log(f"[shared] building {stage} ({h}) in {build}")
                run_pipeline(sub, run_dir=build, argv=["rlhf", "sweep", "shared", build.name])
                if not _done(build, stage):
                    raise ConfigError(f"shared stage {stage} was not built in {build}")
            else:
                log(f"[shared] {stage} ({h}) from {build}")
        for earlier in build_stages(cfg, stage):
            _bring(build, run_dir, earlier)
        got.append(stage)
    return got


def group_keys(cfg, stages: Iterable[str]) -> tuple:
    from rlhf.config import stage_hash
    return tuple(stage_hash(cfg, s) for s in PIPELINE_ORDER if s in set(stages) and s in cfg.stages)


def build_order(keys: list[tuple]) -> list[int]:
    """Indices of runs, given each run's tuple of shared-stage hashes (first stage first):
    first one run per group of the first shared stage (they build it, in parallel), then
    one run per distinct full tuple (they build the later stages), then the rest (which
    only copy, so they never hold a worker while waiting on a build)."""
    tiers: list[list[int]] = [[], [], []]
    seen_first, seen_full = set(), set()
    for i, k in enumerate(keys):
        if not k or k[:1] not in seen_first:
            tiers[0].append(i)
        elif k not in seen_full:
            tiers[1].append(i)
        else:
            tiers[2].append(i)
        seen_first.add(k[:1])
        seen_full.add(k)
    return tiers[0] + tiers[1] + tiers[2]


def first_of_group_first(specs: list, stages: Iterable[str]) -> list:
    """``specs`` (RunSpec) in :func:`build_order`."""
    stages = list(stages)
    if not stages:
        return list(specs)
    return [specs[i] for i in build_order([group_keys(s.config, stages) for s in specs])]
