"""The library's layout: one wing per stage of the workflow, no import cycles, and a
prediction job that loads nothing of training."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "ntclass"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the ntclass modules it imports, at module level or inside functions (a
    deferred import hides a cycle from Python, not from the reader)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
                    "ntclass"):
                for alias in node.names:
                    child = f"{node.module}.{alias.name}"
                    found.add(child if child in modules else node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("ntclass")}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_every_stage_of_the_rules_has_a_wing_of_the_library():
    stages = {p.stem for p in (ROOT / "rules").glob("*.smk")} - {"common", "data"}
    wings = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert stages == {"split", "train", "predict", "evaluate", "view"}
    assert stages <= wings
    assert {"sources", "models"} <= wings


def test_the_library_has_no_import_cycles():
    graph = _import_graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_a_shard_job_imports_neither_training_nor_gunpowder_nor_tensorboard():
    script = (ROOT / "workflow_scripts" / "predict_shard.py").read_text()
    imports = "\n".join(line for line in script.splitlines() if line.startswith("from "))
    code = (f"import sys\n{imports}\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('gunpowder', 'tensorboard', 'tensorboardX') or m.startswith('ntclass.train')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "ntclass.predict" in imports
    assert out.strip() == "[]"


def test_the_schema_ships_inside_the_package():
    from ntclass.config import SCHEMA_PATH

    assert Path(SCHEMA_PATH).parent == PACKAGE
    assert "config.schema.yaml" in (ROOT / "pyproject.toml").read_text()
    assert (ROOT / "config" / "config.schema.yaml").resolve() == Path(SCHEMA_PATH).resolve()


def test_code_and_rules_are_lint_clean():
    """What `make lint` runs: ruff, snakefmt (the rule files, as Snakemake's workflow
    catalog checks them) and snakemake --lint."""
    bin_dir = Path(sys.executable).parent
    for command in ([bin_dir / "ruff", "check", "src", "tests", "workflow_scripts",
                     "benchmarks"],
                    [bin_dir / "snakefmt", "--check", "Snakefile", "rules"],
                    [bin_dir / "snakemake", "--lint"]):
        result = subprocess.run([str(c) for c in command], cwd=ROOT, capture_output=True,
                                text=True)
        assert result.returncode == 0, (command[0], result.stdout[-2000:], result.stderr[-2000:])


# Snakemake's own workflow attributes the Snakefile reads: public names the docs do not list
# (the config files given on the command line), kept for the demo config's replacement.
WORKFLOW_ATTRIBUTES = {"configfiles", "overwrite_configfiles"}
PRIVATE_SNAKEMAKE = re.compile(r"workflow\.modifier|modify_path|is_deriving_function"
                               r"|[\w)\]]\._\w")
# a function taking resources or threads it does not need, for Snakemake to count what it
# returns as derived (outside the rerun trigger): how work_cut hid values, an internal rule
DERIVED_BY_SIGNATURE = re.compile(r"(\bdef \w+|\blambda)\b[^:]*\b(resources|threads)\b")


def test_the_workflow_touches_no_private_or_undocumented_snakemake_name():
    """The rules use only documented Snakemake: no path modifier (a module's prefix and a
    storage reach the jobs through their inputs and outputs), no private attribute (names
    with a leading underscore), no workflow attribute beyond the two the Snakefile reads."""
    files = [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk")),
             *sorted((ROOT / "workflow_scripts").glob("*.py"))]
    for path in files:
        text = path.read_text()
        for pattern in (PRIVATE_SNAKEMAKE, DERIVED_BY_SIGNATURE):
            found = pattern.search(text)
            assert found is None, f"{path.name} uses {found.group()!r}"
        attributes = set(re.findall(r"\bworkflow\.(\w+)", text)) - {"rst"}
        assert attributes <= WORKFLOW_ATTRIBUTES, (path.name, attributes)
