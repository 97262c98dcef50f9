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


def module_imports(pkg):
    """{module: modules of the same package it imports}, at any depth (a function-level import
    is a dependency too), for every module of ``pkg``."""
    folder = package_folder(pkg)
    graph = {}
    for f in folder.rglob("*.py"):
        parts = f.relative_to(folder).with_suffix("").parts
        name = ".".join((pkg,) + parts[:-1] + (() if parts[-1] == "__init__" else parts[-1:]))
        here = name if parts[-1] == "__init__" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                    mod = f"{base}.{node.module}" if node.module else base
                else:
                    mod = node.module or ""
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t.startswith(pkg + ".")}
        graph[name] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def find_cycle(graph):
    """One import cycle as a list of modules, or None (depth-first search)."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        state[m] = "done"
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_inside_a_package():
    """Not even through a function-level import (pipeline <-> ppo once was one)."""
    for pkg in ("rlhf", "rlhf_eval", "rlhf_analysis", "rlhf_slurm"):
        graph = module_imports(pkg)
        assert graph, pkg
        assert find_cycle(graph) is None, f"import cycle in {pkg}: {' -> '.join(find_cycle(graph))}"


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
