"""Sweep files without a cluster: expansion, run ids, bad input (exit 2, nothing submitted),
and one tiny run through the in-process `debug` executor."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rlhf.cli import main as rlhf_main
from rlhf_slurm.sweep import SweepError, expand, load_sweep, parse_sweep

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "experiments" / "quickstart.yaml"
TINY = {"model.n_layer": 1, "model.n_embd": 32, "pretrain.steps": 30, "pretrain.batch_size": 16, "sft.epochs": 1,
        "rm.n_prompts": 24, "rm.epochs": 1, "ppo.steps": 4, "ppo.batch_size": 8, "ppo.minibatch_size": 8,
        "ppo.epochs": 1, "ppo.checkpoint_every": 2, "world.corpus_docs": 200}


def sweep_doc(tmp_path: Path, **sections) -> dict:
    doc = {"name": "t", "out_dir": str(tmp_path / "sweeps"), "base": {"config": str(QUICKSTART)}}
    doc.update(sections)
    return doc


def write(tmp_path: Path, doc: dict) -> Path:
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


def test_the_example_sweep_expands_to_8_runs_with_stable_readable_ids():
    sw = load_sweep(REPO / "experiments" / "sweep_quickstart.yaml")
    runs = expand(sw)
    assert len(runs) == 8 and len({r.run_id for r in runs}) == 8
    assert runs[0].run_id.startswith("beta=0.02,ptx_coef=0,seed=0-")
    assert [r.run_id for r in expand(load_sweep(REPO / "experiments" / "sweep_quickstart.yaml"))] == \
        [r.run_id for r in runs]
    cfg = runs[-1].config
    assert (cfg.ppo.beta, cfg.ppo.ptx_coef, cfg.seed) == (0.1, 1.0, 1)
    assert cfg.name == runs[-1].run_id and cfg.out_dir == str(Path("sweeps") / "sweep_quickstart" / "runs")


def test_run_id_hash_follows_the_resolved_config(tmp_path):
    doc = sweep_doc(tmp_path, grid={"ppo.beta": [0.1]})
    a = expand(parse_sweep(doc))[0].run_id
    doc["base"]["overrides"] = {"rm.k": 5}
    b = expand(parse_sweep(doc))[0].run_id
    assert a.split("-")[0] == b.split("-")[0] == "beta=0.1" and a != b


def test_zip_seeds_and_clashing_short_names(tmp_path):
    doc = sweep_doc(tmp_path, grid={"rm.lr": [1e-4], "ppo.lr": [1e-5, 2e-5]},
                    zip=[{"rm.k": [2, 4], "rm.batch_size": [16, 8]}], seeds=2)
    runs = expand(parse_sweep(doc))
    assert len(runs) == 1 * 2 * 2 * 2
    assert runs[0].run_id.startswith("rm.lr=0.0001,ppo.lr=1e-05,k=2,batch_size=16,seed=0-")
    assert {(r.config.rm.k, r.config.rm.batch_size) for r in runs} == {(2, 16), (4, 8)}


@pytest.mark.parametrize("sections, message", [
    ({"grid": {"ppo.betta": [0.1]}}, "unknown config key 'ppo.betta' (did you mean ppo.beta"),
    ({"grid": {}}, "empty grid"),
    ({"grid": {"ppo.beta": []}}, "empty list of values"),
    ({"grid": {"ppo.beta": [0.1, -1.0]}}, "ppo.beta=-1.0 is out of range"),
    ({"grid": {"ppo.beta": [0.1]}, "seeds": [0], "zip": [{"seed": [1]}]}, "varied twice"),
    ({"zip": [{"rm.k": [2, 4], "rm.lr": [1e-4]}]}, "same length"),
    ({"grid": {"ppo.beta": [0.1, 0.2]}, "seeds": 600}, "more than max_runs=1000"),
    ({"grid": {"ppo.beta": [0.1]}, "slurm": {"gpu": 1}}, "unknown slurm setting 'slurm.gpu'"),
    ({"grid": {"ppo.beta": [0.1]}, "slurm": {"gpus": True}}, "slurm.gpus: expected an integer, got True"),
    ({"grid": {"ppo.beta": [0.1]}, "slurm": {"mem_gb": float("inf")}}, "slurm.mem_gb: expected a finite number"),
    ({"grid": {"ppo.beta": [0.1]}, "slurm": {"nodes": 2}}, "slurm.nodes=2 is out of range"),
    ({"grid": {"ppo.beta": [0.1]}, "slurm": {"time": 0}}, "slurm.time_min=0 is out of range: must be >= 1"),
    ({"grid": {"ppo.beta": [0.1]}, "slurm": {"launcher": "mpi"}}, "slurm.launcher='mpi' is out of range"),
    ({"grid": {"ppo.minibatch_size": [16, 2]}, "slurm": {"procs_per_node": 4}},
     "ppo.batch_size=32 and ppo.minibatch_size=2 must divide by the 4 data-parallel processes"),
    ({"grid": {"ppo.rounds": [2]}, "slurm": {"gpus_per_node": 2}}, "ppo.rounds > 1 runs in one process only"),
    ({"grid": {"ppo.beta": [0.1]}, "slurm": {"gpus_per_node": 2, "procs_per_node": 4}},
     "procs_per_node=4 exceeds gpus_per_node=2"),
])
def test_bad_sweeps_exit_2_before_anything_is_submitted(tmp_path, capsys, sections, message):
    f = write(tmp_path, sweep_doc(tmp_path, **sections))
    assert rlhf_main(["sweep", str(f), "--executor", "debug"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "sweeps").exists()


def test_max_runs_is_configurable(tmp_path, capsys):
    f = write(tmp_path, sweep_doc(tmp_path, grid={"ppo.beta": [0.1, 0.2, 0.3]}))
    assert rlhf_main(["sweep", str(f), "--max-runs", "2", "--dry-run"]) == 2
    assert "3 runs, more than max_runs=2" in capsys.readouterr().err


def test_run_ids_hash_only_keys_off_their_defaults(monkeypatch):
    """A switch added to the code at its default changes no run id (a resubmitted sweep finds
    its finished runs); the same switch at another value does."""
    import rlhf_slurm.sweep as sw
    from rlhf.config import from_dict
    cfg = from_dict({"ppo": {"beta": 0.05}, "seed": 2})
    before = sw.config_hash(cfg)
    real = sw.flatten
    new_key = {"value": 0.0}

    def with_new_switch(obj):  # the code grew a key ppo.new_switch with default 0.0
        flat = real(obj)
        flat["ppo.new_switch"] = new_key["value"] if obj is cfg else 0.0
        return flat
    monkeypatch.setattr(sw, "flatten", with_new_switch)
    assert sw.config_hash(cfg) == before
    new_key["value"] = 1.0
    assert sw.config_hash(cfg) != before
    monkeypatch.setattr(sw, "flatten", real)
    assert sw.config_hash(from_dict({"seed": 2, "ppo": {"beta": 0.05}, "name": "other"})) == before
    assert sw.config_hash(from_dict({"seed": 2, "ppo": {"beta": 0.2}})) != before  # ppo.beta=0.2 is the default
    assert sw.config_hash(from_dict({"seed": 2, "ppo": {"beta": 0.2}})) == sw.config_hash(from_dict({"seed": 2}))
    # a switch that changes no result, added after run ids existed: a base config turning it on keeps the ids
    assert sw.config_hash(from_dict({"seed": 2, "ppo": {"beta": 0.05, "parallel_critic": True}})) == before


def test_unreachable_cluster_is_a_clear_error(tmp_path, capsys, monkeypatch):
    # the real Slurm client (when installed) pointed at a controller that is not running
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=nowhere\nSlurmctldHost=localhost\nSlurmctldPort=6999\nAuthType=auth/munge\n"
                    "MessageTimeout=1\nTCPTimeout=1\nNodeName=localhost CPUs=1\nPartitionName=debug Nodes=localhost\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    f = write(tmp_path, sweep_doc(tmp_path, grid={"ppo.beta": [0.1]}, slurm={"cpus_per_task": 2}))
    assert rlhf_main(["sweep", str(f), "--executor", "slurm"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach Slurm" in err and "cluster-up.sh" in err
    assert not (tmp_path / "sweeps").exists()


def test_not_a_sweep_dir(tmp_path, capsys):
    assert rlhf_main(["sweep", "status", str(tmp_path)]) == 2
    assert "not a sweep directory" in capsys.readouterr().err


def test_debug_executor_runs_in_process_then_collects(tmp_path, capsys):
    doc = sweep_doc(tmp_path, base={"config": str(QUICKSTART), "overrides": TINY}, seeds=[3])
    f = write(tmp_path, doc)
    assert rlhf_main(["sweep", str(f), "--executor", "debug"]) == 0
    sdir = tmp_path / "sweeps" / "t"
    assert rlhf_main(["sweep", "status", str(sdir)]) == 0
    out = capsys.readouterr().out
    assert "DONE" in out and "ppo.final_gold_reward=" in out
    assert rlhf_main(["sweep", "collect", str(sdir)]) == 0
    import pandas as pd
    df = pd.read_parquet(sdir / "results.parquet")
    assert len(df) == 1 and df.loc[0, "seed"] == 3 and df.loc[0, "state"] == "done"
    assert df.loc[0, "run_id"].startswith("seed=3-")
    # done: never run again
    assert rlhf_main(["sweep", str(f), "--executor", "debug"]) == 0
    assert "nothing to submit" in capsys.readouterr().out


def test_more_threads_than_slurm_cpus_is_refused_before_anything_is_submitted(tmp_path, capsys):
    # the quickstart runs 2 threads: on 1 CPU per task they would share a core, silently
    f = write(tmp_path, sweep_doc(tmp_path, grid={"ppo.beta": [0.1]}, slurm={"cpus_per_task": 1}))
    assert rlhf_main(["sweep", str(f), "--executor", "slurm"]) == 2  # before Slurm is asked
    err = capsys.readouterr().err
    assert "threads=2 x 1 process(es) per task need 2 CPUs" in err and "slurm.cpus_per_task=1" in err
    assert not (tmp_path / "sweeps").exists()
    from rlhf_slurm.submit import check_cpus
    ok = load_sweep(write(tmp_path, sweep_doc(tmp_path, grid={"ppo.beta": [0.1]}, slurm={"cpus_per_task": 2})))
    check_cpus(ok, expand(ok))  # 2 threads on 2 CPUs
    dp = load_sweep(write(tmp_path, sweep_doc(tmp_path, grid={"ppo.beta": [0.1]}, base={
        "config": str(QUICKSTART), "overrides": {"threads": 1}}, slurm={"cpus_per_task": 1, "procs_per_node": 2})))
    with pytest.raises(SweepError, match=r"threads=1 x 2 process\(es\) per task need 2 CPUs"):
        check_cpus(dp, expand(dp))
    specs = expand(dp)
    for r in specs:
        r.config.threads = 0  # torch's default: whatever the task is given
    check_cpus(dp, specs)


def test_threads_0_is_torchs_default_in_a_sweep_as_in_rlhf_run(tmp_path):
    """threads=0 leaves the thread count to torch under `rlhf sweep` too (it meant 1 there), and
    meta.json records what the run ran on."""
    import json
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    default = int(subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                                 capture_output=True, text=True, env=env, check=True).stdout)
    if default < 2:
        pytest.skip("torch's default is one thread on this machine: threads=0 cannot be told from 1")
    doc = sweep_doc(tmp_path, base={"config": str(QUICKSTART), "overrides": {
        **TINY, "threads": 0, "stages": ["pretrain"], "pretrain.steps": 2}}, seeds=[0])
    f = write(tmp_path, doc)
    p = subprocess.run([sys.executable, "-m", "rlhf.cli", "sweep", str(f), "--executor", "local"], env=env,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    (run,) = [d for d in (tmp_path / "sweeps" / "t" / "runs").iterdir() if d.is_dir()]
    meta = json.loads((run / "meta.json").read_text())
    assert meta["torch_threads"] == default and meta["device"] == "cpu"


def test_sweep_out_dir_must_be_a_path(tmp_path, capsys):
    f = write(tmp_path, {**sweep_doc(tmp_path, grid={"ppo.beta": [0.1]}), "out_dir": ["a", "b"]})
    assert rlhf_main(["sweep", str(f), "--dry-run"]) == 2
    assert "out_dir: expected a directory path, got ['a', 'b']" in capsys.readouterr().err
