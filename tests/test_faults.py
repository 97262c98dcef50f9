"""Fault injection (issue 14: nothing lost, ever), against real `rlhf run` processes and files.

Every case breaks something a user or a machine can break -- kill -9 at random points of
every stage, two runs into one directory, a torn or empty run file, a corrupt checkpoint,
a bad data file, a read-only or full directory, a bad config -- and checks that the command
says so (exit 2 naming the file/line/key) and that no finished result is lost or misattributed.

Kill points are drawn from ``random.Random(KILL_SEED)``: the same points on every run.
Read-only and full directories use small tmpfs mounts (root ignores file modes); where
``mount`` is not allowed those tests are skipped with the reason.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, rlhf_cmd, tiny_overrides

QUICK = str(REPO / "experiments" / "quickstart.yaml")
KILL_SEED = 14
STAGES = ("pretrain", "sft", "rm", "ppo")
KILL_POINTS: list[dict] = []  # what the kill tests tried (printed in the summary test)


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e["HF_HUB_OFFLINE"] = "1"
    return e


def run_cli(args, timeout=300, cwd=None, **kw):
    return subprocess.run(rlhf_cmd() + list(args), capture_output=True, text=True, timeout=timeout,
                          env=env(), cwd=cwd or REPO, **kw)


def start_cli(args, cwd=None):
    return subprocess.Popen(rlhf_cmd() + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(), cwd=cwd or REPO)


def tiny(out, name="tiny", extra=()):
    return ["run", QUICK] + tiny_overrides(out, name, list(extra))


def status(run: Path) -> dict:
    from rlhf.rundir import RunDir
    return RunDir(run).status()


def untimed(row: dict) -> dict:
    return {k: v for k, v in row.items() if "time" not in k and k != "init"}  # init: a path in the run dir


def snapshot(run: Path) -> dict[str, str]:
    """The finished stages' summaries (what must never be lost)."""
    return {s: (run / s / "summary.json").read_text() for s in STAGES if (run / s / "DONE").exists()}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One uninterrupted tiny run through all four stages: the reference and the template."""
    out = tmp_path_factory.mktemp("base")
    r = run_cli(tiny(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out / "tiny"


@pytest.fixture
def copy(base, tmp_path):
    """A private copy of the finished base run (same out_dir layout: <tmp>/tiny)."""
    dst = tmp_path / "tiny"
    shutil.copytree(base, dst)
    return dst


def mount_tmpfs(path: Path, size: str = "4m", ro: bool = False) -> None:
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if ro else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}): read-only and full "
                    f"directories need one, since root ignores file modes")


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


# ----------------------------------------------------------------------------- 1. the lock

def test_second_run_is_refused_with_the_holders_pid_and_host(copy):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[2]); from rlhf.rundir import RunLock; "
        "l = RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(60)"), str(copy), str(REPO)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(copy)
        st_before = (copy / "status.json").read_text()
        r = run_cli(tiny(copy.parent, extra=["stages=[ppo]", "--force"]))
        assert r.returncode == 2, r.stderr[-2000:]
        assert f"pid {holder.pid}" in r.stderr and socket.gethostname() in r.stderr
        assert snapshot(copy) == before and (copy / "status.json").read_text() == st_before
    finally:
        holder.kill()
        holder.wait()


def test_two_concurrent_runs_from_scratch(tmp_path):
    a, b = start_cli(tiny(tmp_path)), start_cli(tiny(tmp_path))
    ra, rb = a.communicate(timeout=300), b.communicate(timeout=300)
    codes = sorted([a.returncode, b.returncode])
    assert codes == [0, 2], (ra[1][-2000:], rb[1][-2000:])
    loser = ra[1] if a.returncode == 2 else rb[1]
    assert "is in use by pid" in loser and "HFValidationError" not in loser
    run = tmp_path / "tiny"
    assert status(run)["state"] == "done"
    steps = [r["step"] for r in map(json.loads, (run / "ppo" / "metrics.jsonl").read_text().splitlines())]
    assert steps == list(range(6))  # every PPO step, once


def test_stale_lock_is_taken_over_and_dead_holder_reads_interrupted(copy):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (copy / ".lock").write_text(f"{dead.pid} {socket.gethostname()}\n")
    st = json.loads((copy / "status.json").read_text())
    st.update(state="running", stage="ppo", pid=dead.pid, host=socket.gethostname())
    (copy / "status.json").write_text(json.dumps(st))
    s = status(copy)
    assert s["state"] == "interrupted" and str(dead.pid) in s["error"]
    r = run_cli(tiny(copy.parent))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "taking over the lock" in r.stderr and f"pid {dead.pid}" in r.stderr
    assert status(copy)["state"] == "done"


# ----------------------------------------------------------------------------- 2-3. --force

@pytest.mark.parametrize("case", ["rm_missing_rejected", "sft_bad_rows", "ppo_not_utf8", "rm_without_sft"])
def test_force_with_bad_input_deletes_nothing(copy, case):
    bad = copy.parent / "bad.jsonl"
    if case == "rm_missing_rejected":
        bad.write_text('{"prompt": "q", "chosen": "a"}\n' * 3)
        extra, want = ["stages=[rm]", f"rm.data={bad}", "rm.k=2"], "'rejected'"
    elif case == "sft_bad_rows":
        bad.write_text('{"prompt": "q", "response": "a"}\n{"prompt": "q", "response": 7}\n')
        extra, want = ["stages=[sft]", f"sft.data={bad}"], "line 2"
    elif case == "ppo_not_utf8":
        bad = copy.parent / "bad.txt"
        bad.write_bytes(b"a fine prompt\n\xff\xfe broken\n")
        extra, want = ["stages=[ppo]", f"ppo.data={bad}"], "line 2"
    else:
        shutil.rmtree(copy / "sft")
        extra, want = ["stages=[rm]"], "sft"
    before = snapshot(copy)
    r = run_cli(tiny(copy.parent, extra=extra + ["--force"]))
    assert r.returncode == 2, r.stderr[-2000:]
    assert want in r.stderr and "Traceback" not in r.stderr
    assert snapshot(copy) == before


def test_force_refuses_a_change_to_a_stage_it_does_not_redo(copy):
    cfg_before = (copy / "config.yaml").read_text()
    r = run_cli(tiny(copy.parent, extra=["stages=[ppo]", "--force", "rm.k=4"]))  # override after --force
    assert r.returncode == 2 and "rm.k" in r.stderr and "rm" in r.stderr
    assert (copy / "config.yaml").read_text() == cfg_before


def test_partial_force_records_each_stages_config(copy):
    from rlhf_analysis.data import run_row
    from rlhf.rundir import RunDir
    r = run_cli(tiny(copy.parent, extra=["stages=[ppo]", "ppo.beta=0.1"]) + ["--force"])
    assert r.returncode == 0, r.stderr[-2000:]
    rd = RunDir(copy)
    assert rd.stage_config("ppo")["ppo"]["beta"] == 0.1
    assert rd.stage_config("rm")["ppo"]["beta"] == 0.2 and rd.stage_config("rm")["rm"]["k"] == 3
    # a torn top-level config.yaml: the per-stage configs still attribute every result
    (copy / "config.yaml").write_text("model: {n_layer: [")
    row = run_row(copy)
    assert row["ppo.beta"] == 0.1 and row["rm.k"] == 3 and row["rm.k"] == json.loads(
        (copy / "rm" / "summary.json").read_text())["k"]


# ----------------------------------------------------------------------------- 4. checkpoints

CK_ARGS = ["stages=[ppo]", "ppo.steps=14"]


@pytest.fixture(scope="module")
def killed_ppo(base, tmp_path_factory):
    """A forced PPO redo killed (-9) once it had written two checkpoints."""
    run = tmp_path_factory.mktemp("killed") / "tiny"
    shutil.copytree(base, run)
    p = start_cli(tiny(run.parent, extra=CK_ARGS + ["--force"]))
    ckdir = run / "ppo.tmp" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(ckdir.glob("step_??????"))) < 2 and p.poll() is None:
        time.sleep(0.02)
    p.kill()
    p.wait()
    assert len(sorted(ckdir.glob("step_??????"))) == 2, "PPO ended before two checkpoints existed"
    return run


@pytest.mark.parametrize("victim", ["policy/model.safetensors", "trainer_state.pt", "state.json",
                                    "critic/model.safetensors"])
def test_corrupt_newest_checkpoint_falls_back(killed_ppo, tmp_path, victim):
    run = tmp_path / "tiny"
    shutil.copytree(killed_ppo, run)
    cks = sorted((run / "ppo.tmp" / "checkpoints").glob("step_??????"))
    f = cks[-1] / victim
    f.write_bytes(f.read_bytes()[: max(1, f.stat().st_size // 2)])
    r = run_cli(tiny(tmp_path, extra=CK_ARGS))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"checkpoint {cks[-1].name} is damaged" in r.stdout and f"resumed from {cks[0].name}" in r.stdout
    steps = [json.loads(x)["step"] for x in (run / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(14))
    assert json.loads((run / "ppo" / "summary.json").read_text())["steps"] == 14


VARIANT = ["stages=[ppo]", "ppo.steps=12", "ppo.critic=head", "ppo.adaptive_kl=true", "ppo.target_kl=0.05",
           "ppo.rounds=2", "ppo.kl_levels=[0.001,0.01,0.05]", "ppo.ptx_coef=0.5"]


def test_kill_9_resume_is_exact_with_value_head_adaptive_beta_rounds_and_kl_levels(base, tmp_path):
    """Resume after kill -9 in the second round of iterated RLHF, with a value head, the adaptive
    β controller, ptx and KL-level policies: the same metrics and weights as without the kill."""
    from safetensors.torch import load_file
    a, b = tmp_path / "a" / "tiny", tmp_path / "b" / "tiny"
    shutil.copytree(base, a)
    shutil.copytree(base, b)
    extra = VARIANT
    r = run_cli(tiny(a.parent, extra=extra + ["--force"]))
    assert r.returncode == 0, r.stderr[-3000:]
    p = start_cli(tiny(b.parent, extra=extra + ["--force"]))
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None and not (b / "ppo.tmp" / "checkpoints" / "step_000008").exists():
        time.sleep(0.01)
    p.kill()
    p.wait()
    assert (b / "ppo.tmp" / "rm_round1" / "DONE").exists()  # killed in the second round
    assert (b / "ppo" / "DONE").read_text() == (base / "ppo" / "DONE").read_text()  # the old PPO result stays
    r = run_cli(tiny(b.parent, extra=extra))  # the same config: resumes
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from step_00000" in r.stdout
    ra = [untimed(json.loads(x)) for x in (a / "ppo" / "metrics.jsonl").read_text().splitlines()]
    rb = [untimed(json.loads(x)) for x in (b / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert ra == rb and len(ra) == 12 and {r["round"] for r in ra} == {0, 1}
    assert ra[-1]["beta"] != ra[0]["beta"]  # the adaptive controller moved, and resumed where it was
    wa, wb = load_file(a / "ppo" / "model.safetensors"), load_file(b / "ppo" / "model.safetensors")
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
    va, vb = load_file(a / "ppo" / "value_head.safetensors"), load_file(b / "ppo" / "value_head.safetensors")
    assert all((va[k] == vb[k]).all() for k in va)
    assert sorted(p.name for p in (a / "ppo" / "kl").iterdir()) == sorted(p.name for p in (b / "ppo" / "kl").iterdir())


def test_cuda_rng_states_are_checkpointed():
    import torch

    from rlhf.ppo import _rng_state, _set_rng_state
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here: the CUDA RNG round trip needs one")
    torch.cuda.init()
    s = _rng_state()
    assert "cuda" in s and len(s["cuda"]) == torch.cuda.device_count()
    x = torch.rand(4, device="cuda")
    _set_rng_state(s)
    assert torch.equal(torch.rand(4, device="cuda"), x)


def test_cuda_rng_states_round_trip_through_a_checkpoint_file_and_old_checkpoints_load(tmp_path, monkeypatch, capsys):
    """On a CPU machine, with torch.cuda standing in for two devices: the PPO checkpoint's RNG
    record holds every device's CUDA state, survives ``torch.save``/``weights_only`` load and
    is put back; a record without CUDA states (a CPU run, an older checkpoint) loads and
    leaves CUDA alone; another device count is a warning, not a failure."""
    import torch

    from rlhf import ppo
    states = [torch.tensor([1, 2, 3], dtype=torch.uint8), torch.tensor([4, 5, 6], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in states])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: restored.append([t.clone() for t in s]))
    torch.save(ppo._rng_state(), tmp_path / "rng.pt")
    back = torch.load(tmp_path / "rng.pt", weights_only=True)
    ppo._set_rng_state(back)
    assert len(restored) == 1 and all(torch.equal(a, b) for a, b in zip(restored[0], states))
    old = {k: v for k, v in back.items() if k != "cuda"}
    ppo._set_rng_state(old)
    assert len(restored) == 1
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    ppo._set_rng_state(back)
    assert len(restored) == 1 and "CUDA RNG states for 2 devices, this machine has 1" in capsys.readouterr().out
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)  # nothing drawn on CUDA yet: nothing to keep
    assert "cuda" not in ppo._rng_state()


def test_checkpoint_manifest_is_verified(tmp_path):
    from rlhf.rundir import verify_manifest, write_manifest
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "w.bin").write_bytes(b"x" * 100)
    assert "manifest" in verify_manifest(tmp_path)  # no manifest: incomplete
    write_manifest(tmp_path)
    assert verify_manifest(tmp_path) is None
    (tmp_path / "a" / "w.bin").write_bytes(b"x" * 99 + b"y")
    assert "sha256" in verify_manifest(tmp_path)
    (tmp_path / "a" / "w.bin").write_bytes(b"x")
    assert "bytes" in verify_manifest(tmp_path)


# ----------------------------------------------------------------------------- 5. torn run files

@pytest.mark.parametrize("torn", ["", '{"state": "runn'])
def test_torn_status_and_files_are_unknown_not_a_crash(copy, torn, capsys):
    from rlhf_analysis.data import run_row
    from rlhf.rundir import read_jsonl
    from rlhf_slurm.records import run_state
    from rlhf_slurm.report import run_row as sweep_row
    (copy / "status.json").write_text(torn)
    (copy / "rm" / "summary.json").write_text(torn)
    m = copy / "ppo" / "metrics.jsonl"
    m.write_text(m.read_text()[:-40])  # a torn last line
    assert status(copy)["state"] == "unknown"
    assert len(read_jsonl(m)) == 5
    row = run_row(copy)
    assert row["state"] == "unknown" and "ppo.final_kl" in row and "rm.heldout_accuracy" not in row
    # the same directory as one cell of a sweep
    sweep = copy.parent / "sweep"
    (sweep / "runs").mkdir(parents=True)
    shutil.copytree(copy, sweep / "runs" / "cell")
    st = run_state(sweep, "cell", None)
    assert st.state == "failed" and st.error.startswith("broken")
    assert sweep_row(sweep, st)["run_id"] == "cell"
    assert "warning" in capsys.readouterr().err
    if torn:
        return
    r = run_cli(tiny(copy.parent))  # and the run itself goes on (every stage done)
    assert r.returncode == 0, r.stderr[-2000:]
    assert status(copy)["state"] == "done"


def test_interrupted_swap_is_recovered(tmp_path):
    """A crash between finish_stage's two renames: the old stage is put back, never lost."""
    from rlhf.rundir import RunDir
    rd = RunDir(tmp_path)
    (tmp_path / "rm.old").mkdir()
    (tmp_path / "rm.old" / "DONE").write_text("old\n")
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft.old").mkdir()
    rd.recover()
    assert (tmp_path / "rm" / "DONE").read_text() == "old\n" and not (tmp_path / "rm.old").exists()
    assert (tmp_path / "sft").is_dir() and not (tmp_path / "sft.old").exists()
    tmp = rd.begin_stage("rm")
    (tmp / "new.txt").write_text("new")
    assert (tmp_path / "rm" / "DONE").exists()  # the old result stays while the new one is built
    rd.finish_stage("rm", {"x": 1}, "seed: 0\n")
    assert (tmp_path / "rm" / "new.txt").exists() and rd.stage_config("rm") == {"seed": 0}
    assert not (tmp_path / "rm.tmp").exists() and not (tmp_path / "rm.old").exists()


# ----------------------------------------------------------------------------- 6. bad data files

def _bad(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


@pytest.mark.parametrize("loader,data,want", [
    ("demos", b'{"prompt": "q", "response": 3}\n', "line 1: field 'response' must be a string"),
    ("demos", b'{"prompt": "q", "response": "a"}\n[1, 2]\n', "line 2: expected a JSON object, got list"),
    ("demos", b'"just a string"\n', "line 1: expected a JSON object, got str"),
    ("demos", b'{"prompt": "q", "response": "a"}\n{"prompt": \n', "line 2: not valid JSON"),
    ("demos", b'{"prompt": "q", "response": "\xff"}\n', "line 1: not UTF-8"),
    ("demos", b'{"foo": 1}\n{"bar": 2}\n', "no demonstrations found"),
    ("pairs", b'{"prompt": "q", "chosen": "a"}\n', "without 'rejected'"),
    ("pairs", b'{"prompt": "q", "chosen": "a", "rejected": null}\n{"chosen": 5, "rejected": "b"}\n',
     "line 2: field 'chosen' must be a string"),
    ("prompts", b"ok\n\xc3\x28 bad\n", "line 2: not UTF-8"),
    ("prompts_jsonl", b'{"text": "no prompt"}\n', "holds no prompts"),
    ("ptx", b"word\n" * 3, "too little text"),
    ("ptx", b"line\n" * 30 + b"\xff\n", "line 31: not UTF-8"),
])
def test_bad_data_file_names_file_and_line(tmp_path, loader, data, want):
    from rlhf import data as D
    from rlhf.config import DataError
    suffix = {"prompts": ".txt", "ptx": ".txt"}.get(loader, ".jsonl")
    path = _bad(tmp_path, "data" + suffix, data)
    fn = {"demos": D.load_demonstration_file, "pairs": D.load_pair_comparisons, "prompts": D.load_prompts,
          "prompts_jsonl": D.load_prompts, "ptx": D.load_text_lines}[loader]
    with pytest.raises(DataError) as e:
        fn(path)
    assert want in str(e.value) and path in str(e.value)


@pytest.mark.parametrize("key", ["sft.data", "rm.data", "ppo.data", "ppo.ptx_data"])
def test_every_data_setting_says_the_same_for_a_missing_file_or_a_directory(tmp_path, key):
    from rlhf import data as D
    from rlhf.config import DataError
    fn = {"sft.data": D.load_demonstration_file, "rm.data": D.load_pair_comparisons, "ppo.data": D.load_prompts,
          "ppo.ptx_data": D.load_text_lines}[key]
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match=f"^{re.escape(key)}: {re.escape(missing)} does not exist$"):
        fn(missing, key=key)
    with pytest.raises(DataError, match=f"^{re.escape(key)}: {re.escape(str(tmp_path))} is a directory"):
        fn(str(tmp_path), key=key)


def test_skipped_rows_are_counted_and_printed(tmp_path, capsys):
    from rlhf.data import load_demonstration_file, load_pair_comparisons
    p = _bad(tmp_path, "d.jsonl", b'{"prompt": "q", "response": "a"}\n{"prompt": "q"}\n{"x": 1}\n')
    assert load_demonstration_file(p) == [("q", "a")]
    out = capsys.readouterr().out
    assert "skipped 2 of 3 rows" in out and "first at line 2" in out
    p = _bad(tmp_path, "p.jsonl", b'{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q", "chosen": "a"}\n')
    assert len(load_pair_comparisons(p)) == 1
    assert "skipped 1 of 2 rows: 1 rows without 'rejected' (first at line 2)" in capsys.readouterr().out


def test_a_huge_one_word_prompt_is_skipped(base, capsys):
    from transformers import AutoTokenizer

    from rlhf.data import filter_prompts
    tok = AutoTokenizer.from_pretrained(str(base / "world" / "tokenizer"))
    huge = "x" * 100_000
    assert filter_prompts(["What is the colour of the sky?", huge], tok, 256) == ["What is the colour of the sky?"]
    assert "skipped 1 of 2 prompts" in capsys.readouterr().out


def test_bad_data_through_the_command_exits_2(tmp_path):
    bad = _bad(tmp_path, "bad.jsonl", b'{"prompt": "q", "response": "a"}\n{"prompt": 1, "response": "a"}\n')
    r = run_cli(tiny(tmp_path, extra=["stages=[pretrain,sft]", f"sft.data={bad}"]))
    assert r.returncode == 2 and f"{bad}, line 2" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "tiny" / "status.json").exists()  # checked before anything was touched


# ----------------------------------------------------------------------------- 7. OS errors

def test_os_errors_are_messages(tmp_path):
    from rlhf.config import ConfigError, load_config
    f = tmp_path / "a_file"
    f.write_text("x")
    r = run_cli(tiny(f))  # out_dir is a file
    assert r.returncode == 2 and str(f) in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(ConfigError, match="too long"):
        load_config(QUICK, ["name=" + "n" * 300])
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"seed: 1\nname: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8") as e:
        load_config(cfg)
    assert str(cfg) in str(e.value)


def test_invalid_yaml_config_in_run_dir(copy):
    (copy / "config.yaml").write_text("model: {n_layer: [\n")
    before = snapshot(copy)
    r = run_cli(tiny(copy.parent))
    assert r.returncode == 2 and "config.yaml is unreadable" in r.stderr and "Traceback" not in r.stderr
    assert snapshot(copy) == before


def test_read_only_out_dir(tmp_path):
    ro = tmp_path / "ro"
    mount_tmpfs(ro, ro=True)
    try:
        r = run_cli(tiny(ro))
        assert r.returncode == 2 and str(ro) in r.stderr and "Read-only" in r.stderr, r.stderr[-2000:]
    finally:
        umount(ro)


def test_full_disk_loses_nothing(base, tmp_path):
    small = tmp_path / "small"
    mount_tmpfs(small, size="520k")  # room for the first stages (~450 kB), not for PPO
    try:
        shutil.copytree(base / "world", small / "tiny" / "world")
        r = run_cli(tiny(small))
        assert r.returncode == 2 and "No space left" in r.stderr, r.stderr[-2000:]
        assert "Traceback" not in r.stderr
        for s in STAGES:  # whatever finished is complete; nothing half-written looks done
            if (small / "tiny" / s / "DONE").exists():
                json.loads((small / "tiny" / s / "summary.json").read_text())
        assert status(small / "tiny")["state"] in ("failed", "unknown")
    finally:
        umount(small)


# ----------------------------------------------------------------------------- 8. config ranges

@pytest.mark.parametrize("override", [
    "ppo.ptx_seq_len=0", "ppo.ptx_seq_len=-3", "rm.max_length=0", "pretrain.warmup_steps=-5",
    "model.attn_implementation=bogus", "sft.max_examples=-1", "rm.max_examples=-1", "pretrain.warmup_steps=-1",
    "ppo.kl_levels=[-1]", "ppo.vf_coef=-1", "pretrain.weight_decay=-1", "ppo.max_prompt_tokens=0",
    "name=null", "seed=99999999999999999999", "seed=-1", "world.toxic_rate_other=1.5",
])
def test_out_of_range_keys_are_refused(override):
    from rlhf.config import ConfigError, load_config
    with pytest.raises(ConfigError) as e:
        load_config(QUICK, [override])
    assert override.split("=")[0] in str(e.value)


def test_every_numeric_key_has_a_range_check():
    from rlhf import config as C
    flat = C.flatten(C.RunConfig())
    checked = {k for k, _, _ in C._RANGES} | set(C._ANY_NUMBER)
    numeric = {k for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    numeric |= {k for k, v in flat.items() if isinstance(v, list) and v and isinstance(v[0], float)}
    assert numeric - checked == set()


# ----------------------------------------------------------------------------- 9. smaller things

def test_overrides_after_force_and_umask_modes(copy):
    r = run_cli(tiny(copy.parent, extra=["stages=[rm]"])[:2] + ["--force"] + tiny(copy.parent, extra=["stages=[rm]"])[2:],
                preexec_fn=lambda: os.umask(0o022))
    assert r.returncode == 0, r.stderr[-2000:]
    for f in ("rm/summary.json", "rm/model.safetensors", "rm/config.yaml", "status.json", "config.yaml"):
        assert (copy / f).stat().st_mode & 0o777 == 0o644, f


def test_eval_of_a_missing_model_leaves_nothing(tmp_path):
    r = run_cli(["eval", "not-a-real/model", "--suite", "regression"], cwd=tmp_path, timeout=300)
    assert r.returncode == 2
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- kill -9

def _kill_during(run: Path, args, stage: str, rng: random.Random) -> dict:
    """Start `rlhf run`, wait until its status says ``stage``, sleep a random part of a second, kill -9."""
    p = start_cli(args)
    deadline = time.time() + 120
    seen = False
    while time.time() < deadline and p.poll() is None:
        try:
            seen = json.loads((run / "status.json").read_text()).get("stage") == stage and status(run)["state"] == "running"
        except (OSError, ValueError):
            seen = False
        if seen:
            break
        time.sleep(0.005)
    delay = rng.uniform(0.0, 0.8)
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    p.wait()
    st = json.loads((run / "status.json").read_text()) if (run / "status.json").exists() else {}
    point = {"target": stage, "delay_s": round(delay, 3), "stage_at_kill": st.get("stage"),
             "state_at_kill": st.get("state"), "exited_before_kill": p.returncode != -9}
    KILL_POINTS.append(point)
    return point


@pytest.mark.parametrize("chain_seed", [0, 1])
def test_kill_9_in_every_stage_then_resume_matches_uninterrupted(base, tmp_path, chain_seed):
    rng = random.Random(KILL_SEED * 100 + chain_seed)
    run = tmp_path / "tiny"
    args = tiny(tmp_path)
    for stage in ("setup",) + STAGES:  # setup builds the toy world
        before = snapshot(run) if run.exists() else {}
        _kill_during(run, args, stage, rng)
        assert snapshot(run).items() >= before.items()  # no finished stage lost or changed
        if status(run).get("state") == "running":
            pytest.fail("a killed run still reads as running")
    r = run_cli(args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert status(run)["state"] == "done"
    for s in ("pretrain", "sft", "rm", "ppo"):
        a = untimed(json.loads((run / s / "summary.json").read_text()))
        b = untimed(json.loads((base / s / "summary.json").read_text()))
        a.pop("first", None), b.pop("first", None)
        a.pop("final", None), b.pop("final", None)
        assert a == b, s
    rows = [untimed(json.loads(x)) for x in (run / "ppo" / "metrics.jsonl").read_text().splitlines()]
    ref = [untimed(json.loads(x)) for x in (base / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert rows == ref


def test_kill_9_during_a_forced_redo_keeps_the_old_stage(copy):
    rng = random.Random(KILL_SEED)
    for stage in ("sft", "rm"):
        before = snapshot(copy)
        point = _kill_during(copy, tiny(copy.parent, extra=[f"stages=[{stage}]", "--force"]), stage, rng)
        after = snapshot(copy)
        assert after.keys() == before.keys()  # every finished stage is still there, complete
        assert (copy / stage / "model.safetensors").exists() and json.loads(after[stage])
        if after[stage] != before[stage]:  # replaced: only by a complete new one, at the very end
            assert point["stage_at_kill"] == stage and (copy / stage / "config.yaml").exists()
        assert {s: after[s] for s in after if s != stage} == {s: before[s] for s in before if s != stage}
    r = run_cli(tiny(copy.parent))
    assert r.returncode == 0 and status(copy)["state"] == "done"


def test_zz_report_kill_points():
    """Prints the kill points tried (for the issue's closing note); runs last in this file."""
    print(f"\nkill points tried: {len(KILL_POINTS)}")
    for p in KILL_POINTS:
        print("  ", p)
