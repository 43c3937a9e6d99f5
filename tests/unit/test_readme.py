"""The README's layout section and the tree agree: every module is listed, every listed name exists."""

from __future__ import annotations

from tests.conftest import REPO_ROOT

LIBRARY_PACKAGES = sorted(
    f"tasks/lib/{path.parent.name}" for path in (REPO_ROOT / "tasks" / "lib").glob("*/__init__.py")
)
PACKAGES = ["flows", "tasks", "tasks/lib", "tasks/io", *LIBRARY_PACKAGES]


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


def test_the_readme_is_short_and_its_links_and_those_of_docs_resolve() -> None:
    """A newcomer's five minutes: at most 250 lines; every relative link in the README, docs/ and benchmarks/README.md
    names a file or folder that exists (anchors and web addresses are not followed)."""
    import re

    readme = REPO_ROOT / "README.md"
    assert len(readme.read_text(encoding="utf-8").splitlines()) <= 250
    pages = [readme, REPO_ROOT / "benchmarks" / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    broken, checked = [], 0
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue
            checked += 1
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(REPO_ROOT)} -> {target}")
    assert checked > 10 and broken == []
