"""The import layering the code is organised by, read from the source: a break fails here, not in review.

- tasks/lib is pure logic: no Prefect, no MLflow, nothing from tasks/io, the steps or flows.
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
