"""`rlhf findings DIR`: the whole findings suite with one command.

    rlhf findings experiments/findings                          # local, 2 runs at a time, seeds of the files
    rlhf findings experiments/findings --executor slurm --seeds 0,1,2,3,4 --out findings/

``DIR`` holds the suite: ``sweep_*.yaml`` (sweep files, ``slurm/sweep.py``; their base
configs are relative to them), ``eval.yaml`` (eval settings and, per sweep, the suites and
checkpoints to evaluate) and ``claims.yaml`` (``analysis/claims.py``). Phases:

1. **runs**: every sweep into ``<out>/sweeps/<name>/``, every run at ``threads=1`` (its run id
   says so: a run of the same file by ``rlhf sweep`` at another thread count is never taken for
   the suite's). ``--executor local`` runs ``--jobs`` runs at a time, each a ``python -m
   rlhf_slurm.runner`` process (on the CPU when the sweep asks for no GPU, as Slurm and
   submitit's local executor give it), one run of each shared-stage group first
   (``share_stages``, ``slurm/shared.py``); ``slurm`` submits one job array per sweep (the same
   runs, the same floats) and waits for them. Runs that are done are skipped.
2. **collect**: ``results.parquet`` per sweep (``rlhf sweep collect``).
3. **eval**: ``rlhf eval`` on every done run, with the suites its sweep needs (``eval.yaml``),
   ``--jobs`` at a time, at ``threads=1`` and (like the runs) without a GPU when the sweep asks
   for none. A run+suite evaluated successfully with the same settings is
   skipped (``<run>/eval/findings_done.json``).
4. **report**: ``rlhf report <every sweep> --claims claims.yaml --out <out>/report``; with
   ``--baseline DIR`` (an earlier run's report, or its findings output directory) also
   ``rlhf compare DIR <out>/report --out <out>/compare``: every claim row's statistic, new
   against baseline, with a 95% CI of the change (``analysis/compare.py``).
5. **doc**: ``--doc`` (default ``docs/findings.md``): the command, seeds, package versions,
   git commit, wall time of each phase, the claims table, the comparison with the baseline
   (with ``--baseline``) and one figure per claim (copied next to it,
   ``docs/findings/claim_<id>.png``).

Eval, report and compare run as subprocesses (``rlhf eval``, ``rlhf report``, ``rlhf compare``): slurm/ never imports
eval/ or analysis/. Exit status: 0 when every phase finished (claims may still not hold),
1 when runs or evals failed (they are counted in the report), 2 for bad input.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from rlhf.config import InputError, read_yaml_file
from rlhf.rundir import atomic_write_json, atomic_write_text, git_commit, package_versions, read_json

from .sweep import Sweep, expand, load_sweep

EVAL_MARKER = "findings_done.json"


class FindingsError(InputError):
    """Bad findings directory or options (exit status 2)."""


# ------------------------------------------------------------------ inputs
def sweep_files(suite_dir: Path) -> list[Path]:
    files = sorted(suite_dir.glob("sweep_*.yaml"))
    if not files:
        raise FindingsError(f"{suite_dir}: no sweep_*.yaml sweep files")
    return files


def load_eval_spec(suite_dir: Path) -> dict:
    p = suite_dir / "eval.yaml"
    if not p.is_file():
        return {"settings": {}, "sweeps": {}}
    data = read_yaml_file(p, FindingsError, "eval file") or {}
    if not isinstance(data, dict) or set(data) - {"settings", "sweeps"}:
        raise FindingsError(f"{p}: expected a mapping with 'settings' and 'sweeps'")
    for name, v in (data.get("sweeps") or {}).items():
        if not isinstance(v, dict) or not isinstance(v.get("suites", []), list):
            raise FindingsError(f"{p}: sweeps.{name}: expected a mapping with a 'suites' list (and 'checkpoints')")
    return {"settings": data.get("settings") or {}, "sweeps": data.get("sweeps") or {}}


def load_sweeps(suite_dir: Path, out: Path, seeds: Optional[list[int]]) -> list[Sweep]:
    sweeps = []
    for f in sweep_files(suite_dir):
        # every run at threads=1, in its run id too: a run of the same file by `rlhf sweep` at
        # another thread count (other floats) is never taken for the suite's
        sw = load_sweep(f, overrides=["threads=1"], out_dir=str(out / "sweeps"))
        if seeds is not None:
            sw.seeds = list(seeds)
        sweeps.append(sw)
    names = [s.name for s in sweeps]
    if len(set(names)) != len(names):
        raise FindingsError(f"{suite_dir}: two sweep files have the same name ({names})")
    return sweeps


# ------------------------------------------------------------------ phase 1: runs
def _local_job(spec: dict, log: Path) -> int:
    run_dir = Path(spec["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    job = run_dir / "findings_job.json"
    atomic_write_json(job, spec)
    with open(log, "a") as f:
        return subprocess.call([sys.executable, "-m", "rlhf_slurm.runner", str(job)], stdout=f, stderr=subprocess.STDOUT,
                               env=job_env(spec))


def job_env(spec: dict) -> dict:
    """A local run's (or its eval's) environment: one thread, no progress bars, and with the
    sweep's ``gpus_per_node: 0`` no GPU (``device: auto`` then picks the CPU, as under
    submitit's local executor and Slurm)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1")
    if not spec.get("gpus"):
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def run_sweeps(sweeps: list[Sweep], executor: str, jobs: int, retry_failed: bool, say=print) -> dict:
    """Phase 1. Returns {"ran": n, "failed": [run ids]}."""
    from .records import sweep_states
    from .shared import first_of_group_first
    from .submit import job_spec, plan, submit, write_manifest
    todo, failed = [], []
    for sw in sweeps:
        specs = expand(sw)
        for s in specs:
            s.config.threads = 1  # a grid that varies threads too (load_sweeps set the base); slurm's runner reads it
        if executor == "slurm":
            sub = submit(sw, executor="slurm", retry_failed=retry_failed, specs=specs)
            todo += [(sw, rid) for rid in sub.submitted]
            continue
        write_manifest(sw, specs)
        p = plan(sw, specs, retry_failed)
        if p.skipped_active:  # no scheduler here: a run left "running" by a killed command resumes
            say(f"[runs] {sw.name}: {len(p.skipped_active)} runs left unfinished by an earlier command: resumed")
            p.submitted += p.skipped_active
        if p.skipped_failed:
            say(f"[runs] {sw.name}: {len(p.skipped_failed)} failed runs not rerun (--retry-failed reruns them)")
        by_id = {s.run_id: s for s in specs}
        ordered = first_of_group_first([by_id[r] for r in p.submitted], sw.share_stages)
        say(f"[runs] {sw.name}: {len(specs)} runs, {len(p.skipped_done)} done already, {len(ordered)} to run")
        todo += [(sw, job_spec(sw, s)) for s in ordered]
    if executor == "slurm":
        while True:
            active = [s for sw in sweeps for s in sweep_states(sw.directory) if s.state in ("pending", "running")]
            if not active:
                break
            say(f"[runs] waiting for {len(active)} Slurm runs")
            time.sleep(30)
        for sw in sweeps:
            failed += [s.run_id for s in sweep_states(sw.directory) if s.state != "done"]
        return {"ran": len(todo), "failed": failed}
    # builders of each shared-stage group (across sweeps with one out_dir) before the runs that copy
    from .shared import build_order
    order = build_order([_group(sw, spec) if sw.share_stages else () for sw, spec in todo])
    with cf.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futs = {}
        for i in order:
            sw, spec = todo[i]
            log = Path(spec["run_dir"]) / "findings_run.log"
            futs[pool.submit(_local_job, spec, log)] = spec["run_id"]
        for fut in cf.as_completed(futs):
            rc = fut.result()
            say(f"[runs] {futs[fut]}: {'done' if rc == 0 else f'FAILED (exit {rc}, see its findings_run.log)'}")
            if rc != 0:
                failed.append(futs[fut])
    return {"ran": len(todo), "failed": failed}


def _group(sw: Sweep, spec: dict) -> tuple:
    from rlhf.config import from_dict

    from .shared import group_keys
    return group_keys(from_dict(spec["config"]), sw.share_stages)


# ------------------------------------------------------------------ phase 3: eval
def _settings_hash(settings: dict, suites: list[str], checkpoints: list[str]) -> str:
    text = json.dumps({"settings": settings, "suites": sorted(suites), "checkpoints": checkpoints}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def eval_plan(sweeps: list[Sweep], spec: dict) -> list[dict]:
    """The evals still to do: one per done run whose sweep needs suites not yet evaluated."""
    from .records import sweep_states
    out = []
    for sw in sweeps:
        need = spec["sweeps"].get(sw.name) or {}
        suites = list(need.get("suites") or [])
        if not suites:
            continue
        cps = [str(c) for c in need.get("checkpoints") or []]
        settings = {**spec["settings"], **(need.get("settings") or {})}
        h = _settings_hash(settings, suites, cps)
        for st in sweep_states(sw.directory):
            if st.state != "done":
                continue
            rd = sw.directory / "runs" / st.run_id
            done = read_json(rd / "eval" / EVAL_MARKER, {}) or {}
            if done.get("hash") == h:
                continue
            out.append({"run_dir": str(rd), "suites": suites, "checkpoints": cps, "settings": settings, "hash": h,
                        "gpus": sw.profile.gpus_per_node})  # evaluated on the device the runs trained on
    return out


def _eval_one(job: dict) -> tuple[str, int]:
    rd = Path(job["run_dir"])
    cmd = [sys.executable, "-m", "rlhf.cli", "eval", str(rd), "--quiet", "--suite", ",".join(job["suites"])]
    if job["checkpoints"]:
        cmd += ["--checkpoints", ",".join(job["checkpoints"])]
    for k, v in job["settings"].items():
        cmd += ["--set", f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}"]
    cmd += ["--set", "threads=1"]
    (rd / "eval").mkdir(parents=True, exist_ok=True)
    env = job_env(job)
    with open(rd / "eval" / "findings_eval.log", "a") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if rc == 0:
        atomic_write_json(rd / "eval" / EVAL_MARKER, {"hash": job["hash"], "suites": job["suites"],
                                                      "checkpoints": job["checkpoints"], "settings": job["settings"],
                                                      "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return str(rd), rc


def run_evals(todo: list[dict], jobs: int, say=print) -> list[str]:
    failed = []
    with cf.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for rd, rc in pool.map(_eval_one, todo):
            say(f"[eval] {rd}: {'done' if rc == 0 else f'FAILED (exit {rc}, see eval/findings_eval.log)'}")
            if rc != 0:
                failed.append(rd)
    return failed


# ------------------------------------------------------------------ phase 5: the document
def _commits(sweeps: list[Sweep]) -> str:
    """The code's commit (``rlhf.rundir.git_commit`` of the installed package's checkout), and
    the sweep files' commit where they come from another checkout (e.g. a git worktree whose
    experiments/ differ while the package is installed from main)."""
    def say(c: str) -> str:
        return c[:-len("-dirty")] + " (with uncommitted changes)" if c.endswith("-dirty") else c
    code = git_commit()
    out = f"`{say(code)}`"
    srcs = sorted({str(Path(sw.source).resolve().parent) for sw in sweeps if sw.source})
    exp = {git_commit(d) for d in srcs if Path(d).is_dir()} - {"unknown"}
    if exp and exp != {code}:
        out += "; the sweep files' checkout: " + ", ".join(f"`{say(c)}`" for c in sorted(exp))
    return out


def _run_commits(sweep_dirs) -> str:
    """The commits the runs and shared stage builds of ``sweep_dirs`` were made at (their
    meta.json's ``git_commit``), each with its count: a doc phase re-run later reuses runs
    built earlier, and the doc's code commit alone would not say so."""
    counts: dict[str, int] = {}
    dirs = set(sweep_dirs)
    metas = [m for d in dirs for m in (d / "runs").glob("*/meta.json")]
    metas += [m for d in {sd.parent for sd in dirs} for m in (d / "shared").glob("*/meta.json")]
    for m in sorted(set(metas)):
        c = str((read_json(m, {}) or {}).get("git_commit") or "unknown")
        c = c[:-len("-dirty")] + " (with uncommitted changes)" if c.endswith("-dirty") else c
        counts[c] = counts.get(c, 0) + 1
    return ", ".join(f"`{c}` ({n})" for c, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "none found"


def baseline_report(path: str | Path) -> Path:
    """The report directory ``--baseline`` names (a report directory, or a findings output
    directory holding report/), checked before any run starts: it must hold the claims table
    and its per-seed values, and ``rlhf compare`` must read them (compared with itself)."""
    p = Path(path)
    if not (p / "tables" / "claims.csv").is_file() and (p / "report" / "tables" / "claims.csv").is_file():
        p = p / "report"
    for f in ("claims.csv", "claims_seeds.csv"):
        if not (p / "tables" / f).is_file():
            raise FindingsError(f"--baseline {path}: {p / 'tables' / f} not found (a report written by "
                                "`rlhf report ... --claims`; reports from before claims_seeds.csv existed: "
                                "run `rlhf report` on its sweeps again)")
    cmd = [sys.executable, "-m", "rlhf.cli", "compare", str(p), str(p)]
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise FindingsError(f"--baseline {path}: rlhf compare cannot read it: {r.stderr.strip()}")
    return p


def write_doc(doc: Path, command: str, sweeps: list[Sweep], report_dir: Path, timings: dict,
              failed_runs: list[str], failed_evals: list[str], compare_md: Optional[Path] = None,
              compare_base: Optional[Path] = None) -> Path:
    """docs/findings.md from the report's claims table, with the claim figures beside it (and
    the comparison with a baseline: ``compare_md``, ``rlhf compare``'s compare.md, of the
    report ``compare_base``; where that report sits in a findings output directory, the
    commits its runs were built at)."""
    figs = doc.parent / doc.stem  # docs/findings/
    figs.mkdir(parents=True, exist_ok=True)
    links = {}
    for png in sorted((report_dir / "figures").glob("claim_*.png")):
        cid = png.stem.split("_", 1)[1]
        for ext in ("png", "pdf"):
            src = png.with_suffix(f".{ext}")
            if src.exists():
                shutil.copy2(src, figs / src.name)
        links[cid] = f"{figs.name}/{png.name}"
    csv = report_dir / "tables" / "claims.csv"
    if not csv.exists():
        raise FindingsError(f"{csv} is missing: the report phase did not write the claims table")
    import csv as _csv
    with open(csv) as f:
        rows = list(_csv.DictReader(f))
    seeds = sorted({s for sw in sweeps for s in (sw.seeds or [])})
    total = sum(v.get("wall_s", 0.0) for v in timings.values())
    md = ["# Findings", "",
          "Generated by the command below; do not edit by hand (re-run it to update).", "",
          "```bash", command, "```", "",
          f"- Seeds: {', '.join(map(str, seeds))}",
          f"- Sweeps: {', '.join(f'`{sw.name}` ({sw.source})' for sw in sweeps)}",
          f"- Git commit: {_commits(sweeps)}",
          f"- Runs and shared stages built at (their meta.json): {_run_commits(sw.directory for sw in sweeps)}",
          f"- Versions: {', '.join(f'{k} {v}' for k, v in package_versions().items())}",
          f"- Host: {os.uname().nodename}, {os.cpu_count()} CPUs",
          "- Wall time per phase (when it last did work): "
          + ", ".join(f"{k} {v.get('wall_s', 0):.0f} s" for k, v in timings.items()) + f"; total {total:.0f} s "
          f"({total / 60:.1f} min)",
          f"- Runs not done: {len(failed_runs)}" + (f" ({', '.join(failed_runs)})" if failed_runs else "")
          + f"; evals failed: {len(failed_evals)}",
          f"- Full report: `{report_dir}/report.md` (every figure, tables/claims.{{md,csv,tex}})", "",
          "## Claims", "",
          "Mean over seeds with a Student-t 95% interval (clipped to the statistic's range); paired per seed "
          "where two cells share a seed. Runs that failed or diverged are counted in *n seeds*, never averaged "
          "in. A claim that does not hold is shown as such.", "",
          "| claim | statistic | value | 95% CI | n seeds | verdict |", "|---|---|---|---|---|---|"]
    for r in rows:
        def num(k):
            try:
                v = float(r[k])
                return "–" if v != v else f"{v:.3g}"
            except (TypeError, ValueError):
                return "–"
        ci = f"[{num('ci_low')}, {num('ci_high')}] ({r['ci_method']})" if num("ci_low") != "–" else r["ci_method"]
        fig = f" ([figure]({links[r['claim']]}))" if r["claim"] in links else ""
        stat = r["statistic"] + (f"; {r['detail']}" if r.get("detail") else "")
        md.append(f"| {r['row']}{fig} | {stat.replace('|', '/')} | {num('value')} | {ci} | {r['runs']} | "
                  f"**{r['verdict']}** |")
    if compare_md is not None:
        body = compare_md.read_text().split("\n", 1)[1].lstrip("\n")  # without its own title
        base_sweeps = compare_base.parent / "sweeps" if compare_base is not None else None  # a findings --out
        built = ""
        if base_sweeps is not None and base_sweeps.is_dir():
            dirs = [p for p in base_sweeps.iterdir() if p.is_dir() and p.name != "shared"]
            built = f" The baseline's runs and shared stages were built at {_run_commits(dirs)}."
        md += ["", "## Against the baseline", "",
               "Each row's statistic in this run against the baseline's (`rlhf compare`): Δ = this − baseline "
               "with a 95% CI, paired on the seeds both have (else Welch's t). A verdict can flip while its "
               "statistic does not detectably move: the CI touched the threshold in one run and not in the "
               f"other.{built}", "", body.rstrip("\n")]
    md += ["", "## Figures", ""]
    for cid, link in links.items():
        md += [f"![claim {cid}]({link})", ""]
    atomic_write_text(doc, "\n".join(md) + "\n")
    return doc


# ------------------------------------------------------------------ the command
def run_findings(suite_dir: str | Path, executor: str = "local", seeds: Optional[list[int]] = None,
                 out: str | Path = "findings", jobs: int = 2, doc: Optional[str | Path] = "docs/findings.md",
                 retry_failed: bool = False, command: str = "", say=print, until: str = "doc",
                 baseline: Optional[str | Path] = None) -> dict:
    """The five phases (module docstring); ``until="eval"`` stops after the evals."""
    suite_dir, out = Path(suite_dir), Path(out)
    if not suite_dir.is_dir():
        raise FindingsError(f"{suite_dir}: not a directory (expected e.g. experiments/findings)")
    claims = suite_dir / "claims.yaml"
    if not claims.is_file():
        raise FindingsError(f"{suite_dir}: no claims.yaml")
    base_report = baseline_report(baseline) if baseline else None
    sweeps = load_sweeps(suite_dir, out, seeds)
    for sw in sweeps:
        expand(sw)  # every cell valid before anything runs
    spec = load_eval_spec(suite_dir)
    unknown = set(spec["sweeps"]) - {sw.name for sw in sweeps}
    if unknown:
        raise FindingsError(f"{suite_dir}/eval.yaml: sweeps {sorted(unknown)} have no sweep file")
    out.mkdir(parents=True, exist_ok=True)
    tfile = out / "timings.json"
    timings = read_json(tfile, {}) or {}

    def phase(name: str, n_work: int, t0: float) -> None:
        if n_work or name not in timings:
            timings[name] = {"wall_s": round(time.time() - t0, 1), "items": n_work}
        atomic_write_json(tfile, timings)

    t0 = time.time()
    r = run_sweeps(sweeps, executor, jobs, retry_failed, say)
    phase("runs", r["ran"], t0)
    t0 = time.time()
    from .report import collect
    for sw in sweeps:
        collect(sw.directory)  # = rlhf sweep collect
    phase("collect", len(sweeps), t0)
    t0 = time.time()
    todo = eval_plan(sweeps, spec)
    say(f"[eval] {len(todo)} run evaluations to do")
    failed_evals = run_evals(todo, jobs, say)
    phase("eval", len(todo), t0)
    if until == "eval":
        return {"sweeps": [sw.name for sw in sweeps], "failed_evals": failed_evals, "timings": timings}
    t0 = time.time()
    report_dir = out / "report"
    cmd = [sys.executable, "-m", "rlhf.cli", "report", *[str(sw.directory) for sw in sweeps], "--claims",
           str(claims), "--out", str(report_dir)]
    rc = subprocess.call(cmd)
    if rc != 0:
        raise FindingsError(f"the report failed (exit {rc}): {shlex.join(cmd)}")
    compare_md = compare_error = None
    if base_report is not None:
        cmd = [sys.executable, "-m", "rlhf.cli", "compare", str(base_report), str(report_dir), "--out",
               str(out / "compare")]
        rc = subprocess.call(cmd, stdout=subprocess.DEVNULL)
        if rc == 0:
            compare_md = out / "compare" / "compare.md"
            say(f"[compare] {compare_md}")
        else:  # the doc is still written (without the comparison), then this is raised
            compare_error = f"the comparison with the baseline failed (exit {rc}): {shlex.join(cmd)}"
    phase("report", 1, t0)
    from .records import sweep_states
    not_done = [s.run_id for sw in sweeps for s in sweep_states(sw.directory) if s.state != "done"]
    result = {"sweeps": [sw.name for sw in sweeps], "failed_runs": not_done, "failed_evals": failed_evals,
              "report": str(report_dir), "timings": timings}
    if compare_md is not None:
        result["compare"] = str(compare_md)
    if doc:
        result["doc"] = str(write_doc(Path(doc), command, sweeps, report_dir, timings, not_done, failed_evals,
                                      compare_md, base_report))
        say(f"[doc] {result['doc']}")
    if compare_error:
        raise FindingsError(compare_error)
    return result


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("findings", help="run the findings suite: sweeps, eval, report, docs/findings.md",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", help="the suite directory (experiments/findings)")
    p.add_argument("--executor", choices=("local", "slurm"), default="local")
    p.add_argument("--seeds", default=None, help="comma-separated seeds for every sweep (default: the files')")
    p.add_argument("--out", default="findings", help="output directory (sweeps/, report/, timings.json)")
    p.add_argument("--jobs", type=int, default=2, help="local runs and evals at a time (each with one thread)")
    p.add_argument("--doc", default="docs/findings.md", help="the generated document ('' = none)")
    p.add_argument("--retry-failed", action="store_true", help="rerun failed/diverged/interrupted runs")
    p.add_argument("--baseline", default=None, metavar="DIR",
                   help="an earlier run's report (or findings output directory) to compare every claim row "
                        "with (rlhf compare): <out>/compare/ and a section of the doc")
    p.set_defaults(func=_run)
    return p


def _run(args) -> int:
    seeds = None
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise FindingsError(f"--seeds {args.seeds!r}: expected comma-separated integers") from None
    if args.jobs < 1:
        raise FindingsError("--jobs must be >= 1")
    command = "rlhf findings " + shlex.join(sys.argv[2:] if len(sys.argv) > 2 and sys.argv[1] == "findings"
                                            else [args.suite])
    res = run_findings(args.suite, args.executor, seeds, args.out, args.jobs, args.doc or None, args.retry_failed,
                       command, baseline=args.baseline)
    return 1 if res["failed_runs"] or res["failed_evals"] else 0


def main(argv: Optional[list[str]] = None) -> int:
    from rlhf.cli import main as rlhf_main
    return rlhf_main(["findings", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["run_findings", "write_doc", "eval_plan", "run_sweeps", "load_sweeps", "FindingsError"]
