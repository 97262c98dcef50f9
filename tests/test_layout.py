"""Dependencies point one way, and the README's commands are the ones CI runs."""

import ast
import subprocess

from conftest import REPO

RULES = {"rlhf": {"eval", "analysis", "slurm"}, "eval": {"analysis", "slurm"}, "slurm": {"eval", "analysis"}}


def imported_packages(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


def test_dependencies_point_one_way():
    for pkg, forbidden in RULES.items():
        for f in (REPO / pkg).rglob("*.py"):
            bad = set(imported_packages(f)) & forbidden
            assert not bad, f"{f.relative_to(REPO)} imports {bad}"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    out = subprocess.run(
        ["awk", '/<!-- test-command -->/{f=1; next} f && /^```/{if (g) exit; g=1; next} f && g {print; exit}',
         str(REPO / "README.md")], capture_output=True, text=True).stdout.strip()
    assert out.endswith("python -m pytest -q") and out in readme
    assert "experiments/quickstart.yaml" in readme
