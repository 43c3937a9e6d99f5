"""The docs run as tests: every shell block of README.md and docs/*.md that a user copies is run here as written
(with `configs/tiny.yaml` for `configs/demo.yaml` where the page says so), or skipped with its reason. A block not
accounted for below fails `test_every_shell_block_is_accounted_for`, so a new documented command gets a test too.
The Ray block runs in tests/integration/test_ray.py, after the tests that share its cluster (`ray stop` stops
every cluster on the machine)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

PAGES = ["README.md", *sorted(f"docs/{page.name}" for page in (REPO_ROOT / "docs").glob("*.md"))]
TINY = "tiny"  # run, with configs/tiny.yaml for configs/demo.yaml: the page names it as the quick stand-in
RAY = "ray"  # run by tests/integration/test_ray.py, on configs/tiny.yaml, from a directory outside the project
# How each block is tested, by (page, its first command).
HOW: dict[tuple[str, str], str] = {
    ("README.md", "make demo"): "skipped: .ci/run runs `make demo` and `make test` on a fresh clone",
    ("README.md", "cp configs/demo.yaml configs/my-run.yaml"): TINY,
    ("README.md", "make serve-model"): "skipped: needs the demo champion served by the stack; "
    "tests/integration/test_stack.py serves a registered champion with `mlflow models serve` and sends this request",
    ("README.md", "make test"): "skipped: CI runs `make test`; the slow, GPU and benchmark targets take long or a GPU",
    ("docs/pipeline.md", "make serve-model"): "skipped: the README's serving block, word for word (see there)",
    ("docs/testing.md", "make test"): "skipped: CI runs `make test`; `make test-slow` is the slow tier",
    ("docs/usage.md", ".venv/bin/qlora validate configs/my-run.yaml"): "skipped: the README's block runs the same "
    "two commands on the same copy of configs/tiny.yaml",
    ("docs/scaling.md", ".venv/bin/ray start --head --node-ip-address=127.0.0.1 --num-cpus=2"): RAY,
    ("docs/sweeps.md", ".venv/bin/prefect worker start --pool qlora-sweep --limit 1 &"): "skipped: needs `make up`; "
    "tests/integration/test_sweep.py starts a real server, this pool and two such workers, and runs a sweep",
}


@dataclass(frozen=True)
class ShellBlock:
    page: str
    line: int
    text: str

    def commands(self) -> list[str]:
        """One command per line (continuations joined), comments dropped."""
        joined = re.sub(r"\\\n\s*", " ", self.text)
        lines = (re.sub(r"\s+#.*$", "", line).strip() for line in joined.splitlines())
        return [line for line in lines if line and not line.startswith("#")]

    @property
    def key(self) -> tuple[str, str]:
        return self.page, self.commands()[0]

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def shell_blocks() -> list[ShellBlock]:
    blocks = []
    for page in PAGES:
        lines = (REPO_ROOT / page).read_text(encoding="utf-8").splitlines()
        start, language = None, None
        for number, line in enumerate(lines, 1):
            if line.startswith("```") and start is None:
                start, language = number, line[3:].strip()
            elif line.startswith("```"):
                if language in ("bash", "sh", "shell", "console"):
                    blocks.append(ShellBlock(page, start, "\n".join(lines[start : number - 1])))
                start = None
    return blocks


def doc_project(folder: Path) -> Path:
    """A user's checkout of this project, as far as the documented commands see it: its own configs/, models/ (the
    tiny model written where `make smoke` writes it), runs/ and prepared data, the code, venv and raw data linked."""
    from tests.tiny_model import save_tiny_model

    project = folder / "project"
    project.mkdir()
    for name in (".venv", "pyproject.toml", "dvc.yaml"):
        (project / name).symlink_to(REPO_ROOT / name)
    shutil.copytree(REPO_ROOT / "configs", project / "configs")
    (project / "data").mkdir()
    for name in ("raw", "benchmarks"):
        (project / "data" / name).symlink_to(REPO_ROOT / "data" / name)
    save_tiny_model(project / "models" / "tiny-random")
    return project


def doc_env(folder: Path) -> dict[str, str]:
    """The environment of a user's shell: no stack (a temporary Prefect server per command), its own Prefect home."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_", "MLFLOW_", "QLORA_"))}
    return dict(env, PREFECT_HOME=str(folder / "prefect-home"))


def run_block(block: ShellBlock, project: Path, env: dict[str, str], cwd: Path | None = None) -> list[str]:
    """Each command of `block` in a shell, as a user runs it from `cwd` (the project); `<id>` is the run the
    block's earlier commands started. Returns the commands run."""
    ran = []
    for command in block.commands():
        command = command.replace("configs/demo.yaml", "configs/tiny.yaml")
        if "<id>" in command:
            runs = sorted((project / "runs" / "tiny").glob("*/mlflow_run.json"), key=lambda path: path.stat().st_mtime)
            command = command.replace("<id>", runs[-1].parent.name)
        if cwd is not None and cwd != project:
            command = command.replace(".venv/bin/", f"{project}/.venv/bin/").replace("configs/", f"{project}/configs/")
        done = subprocess.run(
            command, shell=True, cwd=cwd or project, env=env, capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, (
            f"{block}: `{command}` exited {done.returncode}\n{done.stdout[-3000:]}\n" + (done.stderr[-3000:])
        )
        ran.append(command)
    return ran


def test_every_shell_block_is_accounted_for() -> None:
    blocks = shell_blocks()
    unknown = [f"{block} ({block.key[1]!r})" for block in blocks if block.key not in HOW]
    assert not unknown, f"shell blocks with no test (add them to HOW): {unknown}"
    stale = sorted(set(HOW) - {block.key for block in blocks})
    assert not stale, f"HOW names blocks the docs no longer have: {stale}"


@pytest.mark.parametrize("block", shell_blocks(), ids=str)
def test_a_documented_block_runs_as_written(block: ShellBlock, tmp_path: Path) -> None:
    """Each block run, or skipped with its reason (`-rs` lists them at the end of `make test`)."""
    how = HOW.get(block.key, "skipped: not accounted for (see test_every_shell_block_is_accounted_for)")
    if how == RAY:
        pytest.skip(f"{block}: runs in tests/integration/test_ray.py, after the tests that share its Ray cluster")
    if how != TINY:
        pytest.skip(f"{block}: {how.removeprefix('skipped: ')}")
    project = doc_project(tmp_path)
    ran = run_block(block, project, doc_env(tmp_path))
    assert len(ran) == len(block.commands())
    finished = list((project / "runs" / "tiny").glob("*/pipeline_result.json"))
    assert finished, "the documented run left no finished run in the project"
