"""Dependencies point one way, and the README's commands are the ones CI runs."""

import ast
import shutil
import subprocess

from conftest import REPO

RULES = {"rlhf": {"rlhf_eval", "rlhf_analysis", "rlhf_slurm"},
         "rlhf_eval": {"rlhf_analysis", "rlhf_slurm"},
         "rlhf_slurm": {"rlhf_eval", "rlhf_analysis"}}


def imported_packages(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


def package_folder(pkg):
    """The folder an installed package is built from (pyproject.toml's package-dir)."""
    import tomllib
    dirs = tomllib.loads((REPO / "pyproject.toml").read_text()).get("tool", {}).get("setuptools", {})
    return REPO / dirs.get("package-dir", {}).get(pkg, pkg)


def test_dependencies_point_one_way():
    for pkg, forbidden in RULES.items():
        files = list(package_folder(pkg).rglob("*.py"))
        assert files, f"no sources for {pkg}"
        for f in files:
            bad = set(imported_packages(f)) & forbidden
            assert not bad, f"{f.relative_to(REPO)} imports {bad}"


def readme_test_command(readme: str) -> str:
    """The fenced line after the <!-- test-command --> marker (read here in Python, not with
    the awk line that .ci/run uses, so that the two can disagree)."""
    after = readme.split("<!-- test-command -->", 1)[1].lstrip("\n")
    assert after.startswith("```"), "the marker must be followed by a fenced block"
    return after.split("\n")[1].strip()


def test_ci_runs_the_readme_test_command(tmp_path):
    cmd = readme_test_command((REPO / "README.md").read_text())
    assert cmd.endswith("python -m pytest -q") and "pip install" in cmd
    # .ci/run itself, in a copy of the layout whose README's test command leaves a mark:
    # it must run whatever that command is, exactly once, from the repository root
    (tmp_path / ".ci").mkdir()
    shutil.copy(REPO / ".ci" / "run", tmp_path / ".ci" / "run")
    probe = "echo ran-from-$(basename $PWD) >> ci_mark"
    (tmp_path / "README.md").write_text(f"# x\n\n<!-- test-command -->\n```bash\n{probe}\n```\n")
    r = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "ci_mark").read_text() == f"ran-from-{tmp_path.name}\n"
    assert f"+ {probe}" in r.stdout


def test_installs_no_generic_top_level_names():
    """pip install puts rlhf, rlhf_eval, rlhf_analysis and rlhf_slurm into site-packages (the
    folders stay eval/, analysis/, slurm/), never a generic name such as eval; test fixtures
    (tests/) are not shipped."""
    import tomllib
    st = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    top = {p.split(".")[0] for p in st["packages"]} | set(st["package-dir"])
    assert top == {"rlhf", "rlhf_eval", "rlhf_analysis", "rlhf_slurm"}
    assert all(package_folder(p).is_dir() for p in top)
    assert not any(p.startswith("tests") for p in st["packages"])
    assert not (REPO / "eval" / "testing.py").exists()
