"""The README's layout section and the tree agree: every module is listed, every listed name exists."""

from __future__ import annotations

from tests.conftest import REPO_ROOT

PACKAGES = ["flows", "tasks", "tasks/lib", "tasks/io"]


def _layout_block() -> str:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Layout", 1)[1]
    return section.split("```", 2)[1]


def test_every_module_is_in_the_layout_and_every_listed_name_exists() -> None:
    block = _layout_block()
    # The names are the first column: everything before the description (two or more spaces).
    listed = {name for line in block.splitlines() if line.strip() for name in line.strip().split("  ")[0].split()}
    modules = {path.name for package in PACKAGES for path in (REPO_ROOT / package).glob("*.py")} - {"__init__.py"}
    assert sorted(modules - listed) == []  # modules missing from the README
    names = {path.name for package in PACKAGES for path in (REPO_ROOT / package).iterdir()}
    top = {path.name + ("/" if path.is_dir() else "") for path in REPO_ROOT.iterdir()} | {f"{n}/" for n in names}
    unknown = [name for name in listed if name not in names | top | {"lib/", "io/", "tasks/lib/", "tasks/io/"}]
    assert unknown == []  # names in the README that the tree does not have
