"""The import layering the code is organised by, read from the source: a break fails here, not in review.

- tasks/lib is pure logic: no Prefect, no MLflow, nothing from tasks/io, the steps or flows. It is a set of packages
  by domain (no module at its top), no module over 450 lines; the packages import each other in layers (core at the
  bottom, then config), with no circle among packages or modules.
- tasks/io is the outside world (Prefect's server among it: events, concurrency limits); no step, no flow.
  It is the only place MLflow is imported: steps and flows reach MLflow through it.
- A step module (tasks/*.py) never imports another step module, only the shared glue in tasks/common.py and
  tasks/pipeline_run.py, and nothing in tasks/ imports flows/.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED_GLUE = {"tasks.common", "tasks.pipeline_run"}
STEP_MODULES = {f"tasks.{path.stem}" for path in (ROOT / "tasks").glob("*.py") if path.stem != "__init__"} - SHARED_GLUE


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def forbidden(imports: set[str], prefixes: set[str]) -> list[str]:
    return sorted(name for name in imports if any(name == p or name.startswith(p + ".") for p in prefixes))


def sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_the_module_sets_are_what_the_rules_are_about():
    assert {"tasks.train", "tasks.evaluate", "tasks.merge", "tasks.forgetting", "tasks.register"} <= STEP_MODULES
    assert len(sources("tasks/lib")) > 20 and len(sources("tasks/io")) > 5


@pytest.mark.parametrize("path", sources("tasks/lib"), ids=lambda p: str(p.relative_to(ROOT)))
def test_lib_is_pure_logic(path):
    prefixes = {"prefect", "mlflow", "tasks.io", "flows", *STEP_MODULES, *SHARED_GLUE}
    assert forbidden(imported_modules(path), prefixes) == []


@pytest.mark.parametrize("path", sources("tasks/io"), ids=lambda p: str(p.relative_to(ROOT)))
def test_io_imports_no_step_or_flow(path):
    assert forbidden(imported_modules(path), {"flows", *STEP_MODULES, *SHARED_GLUE}) == []


@pytest.mark.parametrize(
    "path", [*sorted((ROOT / "tasks").glob("*.py")), *sources("flows")], ids=lambda p: str(p.relative_to(ROOT))
)
def test_mlflow_only_behind_io(path):
    assert forbidden(imported_modules(path), {"mlflow"}) == []


@pytest.mark.parametrize("module", sorted(STEP_MODULES))
def test_no_step_imports_another_step(module):
    path = ROOT / (module.replace(".", "/") + ".py")
    assert forbidden(imported_modules(path), (STEP_MODULES - {module}) | {"flows"}) == []


def test_a_forbidden_import_is_seen(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from tasks.merge import merge_adapter_task\n    import mlflow.pyfunc\n")
    assert forbidden(imported_modules(sample), {"tasks.merge", "mlflow"}) == [
        "mlflow.pyfunc",
        "tasks.merge",
        "tasks.merge.merge_adapter_task",
    ]


MAX_LIBRARY_MODULE_LINES = 450


def library_package(path: Path) -> str:
    return path.relative_to(ROOT / "tasks" / "lib").parts[0]


def test_the_library_is_packages_by_domain_of_short_modules():
    top_level = [p.name for p in (ROOT / "tasks" / "lib").glob("*.py") if p.name != "__init__.py"]
    assert top_level == []
    long = {
        str(p.relative_to(ROOT)): n
        for p in sources("tasks/lib")
        if (n := len(p.read_text().splitlines())) > MAX_LIBRARY_MODULE_LINES
    }
    assert long == {}


def package_imports() -> dict[str, set[str]]:
    """lib package -> the other lib packages its modules import."""
    graph: dict[str, set[str]] = {library_package(p): set() for p in sources("tasks/lib") if p.parent.name != "lib"}
    for path in sources("tasks/lib"):
        for name in imported_modules(path):
            parts = name.split(".")
            if parts[:2] == ["tasks", "lib"] and len(parts) > 2 and parts[2] in graph:
                if parts[2] != library_package(path):
                    graph[library_package(path)].add(parts[2])
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle found by a depth-first walk (empty when the graph is layered)."""
    found, state = [], {}

    def walk(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                found.append(trail[trail.index(target) :] + [target])
            elif target not in state:
                walk(target, [*trail, target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            walk(node, [node])
    return found


def test_library_packages_are_layered():
    graph = package_imports()
    assert {"core", "config", "dataset", "training", "gate"} <= set(graph)
    assert graph["core"] == set() and graph["config"] <= {"core"}
    assert circles(graph) == []


def test_no_module_imports_itself_back_through_others():
    modules = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for p in [*sources("tasks"), *sources("flows")]
    }
    graph = {name: {m for m in imported_modules(path) if m in modules and m != name} for name, path in modules.items()}
    assert circles(graph) == []


def test_a_circle_is_seen():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]


def test_the_cli_imports_prefect_only_after_pointing_it_at_the_stack():
    """Prefect reads its settings (API URL, the temporary server's startup timeout) once, when first imported; the
    CLI sets them after it starts, so importing the CLI must not import Prefect (a module-level `from prefect ...` in
    shared glue sent runs to a temporary server while the local stack was up)."""
    import subprocess
    import sys

    probe = "import sys, flows.cli; print(sorted(m for m in sys.modules if m.split('.')[0] == 'prefect')[:3])"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
