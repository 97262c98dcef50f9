"""Run every stage of a config in order into one run directory.

``run_pipeline(cfg)`` is the whole main job: world (when used) -> pretrain -> SFT ->
reward model -> PPO. A finished stage (its ``DONE`` file exists) is skipped on re-run
unless it was built with a config that differs in a key that shapes it (an interrupted
``--force`` redo: finished now); ``force=True`` redoes the listed stages, each built beside
the old one and swapped in when complete. Before anything in the run directory is touched
the data files and the stages each stage starts from are checked; then the directory is
locked (``rlhf.rundir.RunLock``) for the whole run. The run directory's ``status.json``
always says where the run is: running / done / failed / diverged / interrupted, with the stage.
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Optional


from . import dist, tracking
from .config import ConfigError, InputError, RunConfig, config_changes, dump_yaml, stages_shaped_by
from .errors import Diverged
from .heap import long_lived
from .models import (autocast, context_length, load_tokenizer, pick_device, resolve_source, runtime_info,
                     seed_everything, set_threads)
from .rundir import MODEL_POINTER, RunDir, RunLock, RunLocked, atomic_write_json, read_json, stage_model
from .stop import StopRequested
from .world import World


def uses_world(cfg: RunConfig) -> bool:
    return cfg.model.source == "scratch" or "world" in (cfg.sft.data, cfg.rm.data, cfg.ppo.data)


def run_dir_for(cfg: RunConfig) -> Path:
    return Path(cfg.out_dir) / cfg.name


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


WALL_FILE = "wall.json"  # seconds of every invocation of `rlhf run` into the run directory


def record_wall(rd: RunDir, t_start: float, reset: bool = False) -> tuple[float, int]:
    """Record this invocation's wall time so far in ``<run>/wall.json`` (one entry per
    invocation, keyed by its start time; ``reset`` (--force) forgets earlier ones) and return
    (the total over every recorded invocation, their number): the time a run took across
    resumes. Updated when a stage ends and when the run stops in any way but kill -9."""
    this = time.time() - t_start
    if not rd.writer:
        return this, 1
    data = read_json(rd.path / WALL_FILE, {})
    runs = data.get("invocations") if isinstance(data, dict) and not reset else None
    runs = {k: v for k, v in runs.items() if isinstance(v, (int, float))} if isinstance(runs, dict) else {}
    runs[f"{t_start:.6f}"] = round(this, 3)
    atomic_write_json(rd.path / WALL_FILE, {"invocations": runs, "total_s": round(sum(runs.values()), 3)})
    return sum(runs.values()), len(runs)


def _check_same_config(rd: RunDir, cfg: RunConfig, force: bool) -> None:
    """A run directory holds one config. Without --force any change is refused; with --force a
    change is allowed only when every finished stage it shapes is redone now, so that no
    result is ever attributed to a config it was not built with."""
    old = rd.path / "config.yaml"
    if not old.exists():
        return
    try:
        old_text = old.read_bytes().decode("utf-8")
        changes = config_changes(old_text, cfg)
    except Exception as e:  # noqa: BLE001 - torn, not UTF-8, not YAML, not a mapping
        if force:
            print(f"warning: {old} is unreadable ({type(e).__name__}); --force rewrites it", file=sys.stderr)
            return
        raise ConfigError(f"{old} is unreadable ({type(e).__name__}: {str(e)[:200]}): the run directory's config "
                          f"is unknown; pick another name=..., or --force to redo its stages") from None
    if not changes:
        return
    if not force and _only_more_ppo_steps(changes, cfg):
        print(f"[run] {changes[0]}: PPO continues from its newest checkpoint", flush=True)
        return
    if not force:
        shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
        raise ConfigError(f"run directory {rd.path} holds a different config ({shown}): "
                          f"pick another name=..., or --force to redo it")
    redo = set(cfg.stages)
    for line in changes:
        key = line.split(":", 1)[0]
        kept = [s for s in stages_shaped_by(key) if s not in redo and (rd.path / s / "DONE").exists()]
        if kept:
            raise ConfigError(
                f"--force with a changed {line}: it shapes stage(s) {', '.join(kept)} of {rd.path}, which this "
                f"run does not redo, so their results would be attributed to the new value. Add them to stages=, "
                f"or pick another name=...")


def _only_more_ppo_steps(changes: list[str], cfg: RunConfig) -> bool:
    """True when the only change is a larger ``ppo.steps`` (one reward model: ``ppo.rounds`` =
    1, so the iterations already run are the first ones of the longer run): PPO then continues
    from its newest checkpoint instead of asking for --force."""
    if len(changes) != 1 or not changes[0].startswith("ppo.steps:") or cfg.ppo.rounds != 1:
        return False
    old, new = (x.strip() for x in changes[0].split(":", 1)[1].split("->"))
    try:
        return int(new) > int(old)
    except ValueError:
        return False


PPO_CONTINUED = ("metrics.jsonl", "samples.jsonl.gz", "checkpoints", "kl")  # what a continued PPO stage keeps


def _continue_ppo(rd: RunDir) -> None:
    """Prepare ``ppo.tmp`` to continue the finished ``ppo/`` stage with more iterations: its
    newest checkpoint, metrics, samples and KL-level policies, hard-linked (every file there
    is replaced, never changed in place, so the finished stage stays intact until the new
    one is swapped in). Raises ConfigError when ``ppo/`` kept no checkpoint."""
    from .ppo import checkpoints
    done, tmp = rd.stage("ppo"), rd.path / "ppo.tmp"
    if not rd.writer or checkpoints(tmp / "checkpoints"):
        return  # a continuation already under way: resume it
    if not checkpoints(done / "checkpoints"):
        raise ConfigError(f"ppo.steps was raised, but {done} kept no checkpoint to continue from (made before "
                          f"finished PPO stages kept their newest one): --force redoes PPO from step 0")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name in PPO_CONTINUED + tuple(p.name for p in done.glob("samples.rank*.jsonl.gz")):
        src = done / name
        if src.is_dir():
            shutil.copytree(src, tmp / name, copy_function=os.link)
        elif src.is_file():
            shutil.copy2(src, tmp / name)  # appended to: a copy, not a link
    print(f"[ppo] continuing the finished stage from {checkpoints(tmp / 'checkpoints')[0].name}", flush=True)


def _stage_built_with_other_config(rd: RunDir, stage: str, cfg: RunConfig) -> list[str]:
    """The changes between the config ``stage`` was built with and ``cfg`` that shape it."""
    saved = rd.path / stage / "config.yaml"
    if not saved.exists():
        return []  # made before stages recorded their config: the run's config.yaml was checked
    try:
        changes = config_changes(saved.read_bytes().decode("utf-8"), cfg)
    except Exception as e:  # noqa: BLE001 - unreadable: unknown; the run's config.yaml was checked
        print(f"warning: {saved} is unreadable ({type(e).__name__}): the stage's config is unknown; "
              f"kept as done", file=sys.stderr)
        return []
    return [c for c in changes if stage in stages_shaped_by(c.split(":", 1)[0])]


def _check_inputs(rd: RunDir, cfg: RunConfig) -> None:
    """Everything that can be checked before the run directory is touched: the data files
    of the stages to run, and the finished stages they start from."""
    from .data import check_data_inputs
    from .tracking import check_available
    check_data_inputs(cfg)
    check_available(cfg)  # logging.report_to: the tracker packages are installed
    if cfg.model.source != "scratch":
        resolve_source(cfg.model.source)  # a local path that does not exist: refused here, not after the lock
    need = {"sft": "pretrain" if cfg.model.source == "scratch" and not cfg.sft.init else None,
            "rm": "sft", "ppo": "sft",
            "classifier": "pretrain" if cfg.model.source == "scratch" and not cfg.classifier.init else None}
    for stage in cfg.stages:
        req = need.get(stage)
        if req and req not in cfg.stages and not rd.stage_done(req):
            raise ConfigError(f"stage '{stage}' needs the {req} stage's result, which {rd.path} does not have: "
                              f"add '{req}' to stages" + (" or set model.source" if req == "pretrain" else ""))
    if "ppo" in cfg.stages:
        from .rewards import check_reward_spec, parse_reward_spec
        spec = parse_reward_spec(cfg.ppo.reward)
        own = {"rm": "rm", "classifier": "classifier"}.get(spec.kind) if not spec.target else None
        if own and own not in cfg.stages and not rd.stage_done(own):
            raise ConfigError(f"stage 'ppo' needs the {'reward model' if own == 'rm' else 'classifier'} "
                              f"(ppo.reward={cfg.ppo.reward}), which {rd.path} does not have: add '{own}' to stages")
        if own and own in cfg.stages and cfg.stages.index(own) > cfg.stages.index("ppo"):
            raise ConfigError(f"stages: '{own}' must come before 'ppo' (ppo.reward={cfg.ppo.reward})")
        check_reward_spec(spec)  # a py: function imports, an rm:/hf: folder exists


def _open_run_dir(path: Path) -> None:
    """Create the run directory, turning OS errors into a message naming the path."""
    try:
        if path.exists() and not path.is_dir():
            raise InputError(f"run directory {path} exists and is not a directory")
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except InputError:
        raise
    except OSError as e:
        where = e.filename or path
        raise InputError(f"cannot write the run directory {path}: {where}: {e.strerror or e} "
                         f"(out_dir={path.parent})") from None


def prepare_world(rd: RunDir, cfg: RunConfig):
    """World + its tokenizer under ``<run>/world`` (rebuilt deterministically if missing)."""
    from .tokenizer import train_world_tokenizer
    world = World(cfg.world)
    wdir = rd.path / "world"
    if not (wdir / "DONE").exists():
        tmp = rd.begin_stage("world")
        world.save(tmp)
        tok = train_world_tokenizer(world)
        tok.save_pretrained(str(tmp / "tokenizer"))
        rd.finish_stage("world", {"fingerprint": world.fingerprint(), "vocab_size": len(tok),
                                  "n_facts": len(world.facts), "n_myth_facts": len(world.myth_facts())})
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(wdir / "tokenizer"))
    tok.padding_side = "left"
    return world, tok


def check_world_prompts_fit(cfg: RunConfig, tok, world: World) -> None:
    """Fail before any compute when a prompt plus its response cannot fit the context."""
    from .config import InputError
    if cfg.model.source == "scratch":
        n_ctx = cfg.model.n_positions
    else:
        from transformers import AutoConfig
        c = AutoConfig.from_pretrained(resolve_source(cfg.model.source))
        n_ctx = context_length(c) or 10**9
    new = max(cfg.ppo.max_new_tokens, cfg.rm.max_new_tokens, 14)
    longest = max((p.text for p in world.prompts()), key=lambda t: len(tok(t)["input_ids"]))
    n = len(tok(longest)["input_ids"])
    if n + new > n_ctx:
        raise InputError(f"a prompt of {n} tokens (+{new} new) exceeds the model's context of {n_ctx} "
                         f"(model.n_positions): {longest!r}")


def run_pipeline(cfg: RunConfig, force: bool = False, run_dir: Optional[str | Path] = None,
                 argv: Optional[list[str]] = None) -> Path:
    """Run ``cfg.stages``. Under a launcher (torchrun, accelerate launch: ``WORLD_SIZE`` > 1)
    rank 0 runs the stages before PPO on its own and all ranks run PPO data-parallel
    (``rlhf/dist.py``)."""
    t_start = time.time()
    d = dist.from_env()
    rd_path = Path(run_dir or run_dir_for(cfg))
    if d.world > 1 and cfg.ppo.rounds > 1:
        raise ConfigError("ppo.rounds > 1 (iterated RLHF) runs in one process only: launch without torchrun")
    if d.is_main:  # one process writes a run directory at a time (rlhf/rundir.py RunLock)
        _check_inputs(RunDir(rd_path), cfg)
        _open_run_dir(rd_path)
        try:
            lock = RunLock(rd_path).acquire()
        except RunLocked as e:
            raise InputError(str(e)) from None
        try:
            RunDir(rd_path).recover()
            return _run_locked(cfg, force, rd_path, argv, d, t_start)
        finally:
            lock.release()
    return _run_locked(cfg, force, rd_path, argv, d, t_start)


def _run_locked(cfg: RunConfig, force: bool, rd_path: Path, argv: Optional[list[str]], d: "dist.Dist",
                t_start: float) -> Path:
    run_dir = rd_path
    if d.world <= 1:
        return _run_stages(cfg, force, run_dir, argv, cfg.stages, dist.Dist(), t_start)
    pre = [s for s in cfg.stages if s != "ppo"]
    ready = rd_path / dist.READY_FILE
    if d.is_main:
        with dist.single_process_env():
            _run_stages(cfg, force, rd_path, argv, pre, dist.Dist(), t_start, final="ppo" not in cfg.stages)
        dist.announce_ready(ready)
    else:
        dist.wait_ready(ready)
    if "ppo" not in cfg.stages:
        return rd_path
    try:
        return _run_stages(cfg, force, rd_path, argv, ["ppo"], d, t_start)
    finally:
        d.stop()


def _run_stages(cfg: RunConfig, force: bool, run_dir: Optional[str | Path], argv: Optional[list[str]],
                stages: list[str], d: dist.Dist, t_start: float, final: bool = True) -> Path:
    rd = RunDir(run_dir or run_dir_for(cfg), writer=d.is_main)
    _check_same_config(rd, cfg, force)
    set_threads(cfg.threads)
    device = d.start(pick_device(cfg.device))
    autocast(device, cfg.model.autocast)  # model.autocast=fp16 without CUDA: refused (exit 2) before any compute
    seed_everything(cfg.seed)
    rd.write_provenance(dump_yaml(cfg), cfg.seed, argv, runtime_info(device))
    stage = "setup"
    record_wall(rd, t_start, reset=force and set(stages) >= set(cfg.stages))
    rd.set_status("running", stage=stage, pid=os.getpid(), **({"world_size": d.world} if d.world > 1 else {}))
    try:
        world = tok = None
        if uses_world(cfg):
            world, tok = prepare_world(rd, cfg)
        if cfg.model.source != "scratch":
            tok = load_tokenizer(cfg.model.source)
        if tok is not None:  # model.chat_template: every stage and every saved tokenizer follow it
            from .chat import apply_setting
            apply_setting(tok, cfg.model.chat_template, cfg.model.source)
        if world is not None:
            check_world_prompts_fit(cfg, tok, world)

        # Where each stage starts from.
        def pretrained_path() -> str:
            if cfg.model.source != "scratch":
                return resolve_source(cfg.model.source)
            if not rd.stage_done("pretrain"):
                raise ConfigError("stage 'sft' needs a pretrained model: add 'pretrain' to stages or set model.source")
            return str(rd.stage("pretrain"))

        def sft_path() -> str:
            if not rd.stage_done("sft"):
                raise ConfigError("stages 'rm' and 'ppo' need the SFT model: add 'sft' to stages")
            path = stage_model(rd.stage("sft"))  # the folder, or the model sft.skip points to
            if path is None:
                raise ConfigError(f"{rd.stage('sft')} holds no model (no config.json, no {MODEL_POINTER}): "
                                  f"--force stages=[sft] redoes it")
            return path

        # the libraries, the world and each stage's models live to the end: the collector skips them (rlhf/heap.py)
        with long_lived():
            for stage in stages:
                if rd.stage_done(stage) and not force:
                    stale = _stage_built_with_other_config(rd, stage, cfg)
                    if not stale:
                        print(f"[{stage}] done already, skipped (--force redoes it)")
                        continue
                    if stage == "ppo" and _only_more_ppo_steps(stale, cfg):
                        _continue_ppo(rd)  # more iterations: from the newest checkpoint, beside the old result
                    else:
                        # an interrupted --force redo with a changed config: finish it (the old result stays
                        # until the new one is complete)
                        print(f"[{stage}] done with another config ({'; '.join(stale[:4])}): "
                              f"redoing it beside the old result")
                rd.set_status("running", stage=stage, step=0)
                if force and rd.writer:  # redo from scratch, beside the old result: no resuming from old
                    shutil.rmtree(rd.path / f"{stage}.tmp", ignore_errors=True)  # partial state; the finished
                    # stage stays until finish_stage swaps the new one in
                d.barrier()  # data-parallel PPO: no rank reads ppo.tmp before rank 0 has cleared it
                seed_everything(cfg.seed)
                t0 = time.time()
                # every stage but PPO starts from nothing; PPO says so itself when it finds no checkpoint to resume
                with tracking.stage(cfg, rd.path, stage, rd.writer, fresh=stage != "ppo"):  # logging.report_to
                    summary = _run_one(stage, cfg, rd, world, tok, device, d, pretrained_path, sft_path)
                summary["stage_time_s"] = time.time() - t0
                rd.finish_stage(stage, summary, dump_yaml(cfg))
                record_wall(rd, t_start)
        if not final:
            return rd.path
        this = time.time() - t_start
        wall, n_runs = record_wall(rd, t_start)
        peak = peak_rss_mb()
        rd.set_status("done", stage=cfg.stages[-1], wall_s=round(wall, 1), peak_rss_mb=round(peak, 1),
                      **({"wall_s_this_invocation": round(this, 1), "invocations": n_runs} if n_runs > 1 else {}),
                      **({"world_size": d.world} if d.world > 1 else {}))
        if rd.writer:
            across = f" over {n_runs} invocations ({this:.1f} s in this one)" if n_runs > 1 else ""
            print(f"[run] {rd.path}: done in {wall:.1f} s wall time{across}, peak memory {peak:.0f} MB")
        return rd.path
    except KeyboardInterrupt:
        _record_wall_quietly(rd, t_start)
        _discard_partial(rd, stage)
        rd.set_status("interrupted", stage=stage, error="interrupted by the user (Ctrl-C)")
        raise
    except SystemExit as e:  # e.g. submitit's preemption/requeue: resumable, not a failure
        _record_wall_quietly(rd, t_start)
        _discard_partial(rd, stage)
        rd.set_status("interrupted", stage=stage, error=f"stopped by SystemExit({e.code}) (preempted or requeued)")
        raise
    except StopRequested as e:  # checkpointed at an iteration boundary: resumable
        _record_wall_quietly(rd, t_start)
        rd.set_status("interrupted", stage=stage, step=e.step, error=str(e), checkpoint=e.checkpoint)
        raise
    except FloatingPointError as e:  # Diverged (pretrain, rm, ppo), or a library's own
        _record_wall_quietly(rd, t_start)
        _discard_partial(rd, stage)  # PPO keeps its last good checkpoint
        extra = {"step": e.step, "values": e.values} if isinstance(e, Diverged) else {}
        rd.set_status("diverged", stage=stage, error=str(e), **extra)
        raise
    except BaseException as e:
        _record_wall_quietly(rd, t_start)
        if stage != "ppo":
            _discard_partial(rd, stage)
        rd.set_status("failed", stage=stage, error=f"{type(e).__name__}: {e}")
        raise


def _run_one(stage: str, cfg: RunConfig, rd: RunDir, world, tok, device, d: "dist.Dist", pretrained_path,
             sft_path) -> dict:
    """Run one stage; returns its summary."""
    from .pretrain import run_pretrain
    from .reward import run_reward_stage
    from .sft import load_demonstrations, run_sft
    if stage == "pretrain":
        if cfg.model.source != "scratch":
            rd.begin_stage("pretrain")
            summary = {"skipped": True, "source": cfg.model.source}
        else:
            summary = run_pretrain(cfg, rd, world, tok, device)
    elif stage == "sft":
        init = cfg.sft.init or pretrained_path()
        summary = run_sft(cfg, rd, resolve_source(init), tok, world, device)
    elif stage == "classifier":
        from .classifier import run_classifier_stage
        init = cfg.classifier.init or (pretrained_path() if cfg.model.source == "scratch"
                                       else resolve_source(cfg.model.source))
        if init != "scratch":
            init = resolve_source(init)
        summary = run_classifier_stage(cfg, rd, init, device, tokenizer=tok)
    elif stage == "rm":
        demos = load_demonstrations(cfg, world) if cfg.sft.data == "world" or not cfg.sft.skip else []
        summary = run_reward_stage(cfg, rd, sft_path(), tok, world, device, demos)
    elif stage == "ppo":
        from .ppo import run_ppo
        summary = run_ppo(cfg, rd, sft_path(), str(rd.stage("rm")), tok, world, device, d)
    return summary


def _record_wall_quietly(rd: RunDir, t_start: float) -> None:
    try:
        record_wall(rd, t_start)
    except OSError:  # a full or read-only disk: the status below says what happened
        pass


def _discard_partial(rd: RunDir, stage: str) -> None:
    """A stage's scratch directory never looks complete; remove it unless resumable."""
    if stage in ("ppo",) or not rd.writer:
        return  # PPO keeps its checkpoints in ppo.tmp to resume from
    tmp = rd.path / f"{stage}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp, ignore_errors=True)

