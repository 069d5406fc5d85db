"""The README and the documentation site's pages: length, the opening commands, links that
resolve (files and heading anchors), API references that import, every page in the nav.

The strict site build itself (`mkdocs build --strict`) runs from `make test` and `make docs`."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
SNIPPET = re.compile(r'^--8<-- "([^":]+)(?::(\d*):?(\d*))?"\s*$', re.M)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
API_REF = re.compile(r"^:::\s+([\w.]+)", re.M)


def expand(text: str) -> str:
    """The page as mkdocs sees it: pymdownx.snippets includes (base path: the repository)."""

    def include(m: re.Match) -> str:
        lines = (ROOT / m.group(1)).read_text().splitlines()
        start = int(m.group(2)) if m.group(2) else 1
        end = int(m.group(3)) if m.group(3) else len(lines)
        return "\n".join(lines[start - 1:end])

    return SNIPPET.sub(include, text)


def prose(text: str) -> str:
    """Markdown without code blocks and inline code, where link syntax means nothing."""
    return CODE.sub("", FENCE.sub("", text))


def slug(title: str) -> str:
    """Python-Markdown's toc slug (also GitHub's for these headings): lower case, inline markup
    and punctuation dropped, spaces to hyphens."""
    title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)
    title = re.sub(r"[`*]", "", title).strip().lower()
    title = re.sub(r"[^\w\s-]", "", title)
    return re.sub(r"[-\s]+", "-", title).strip("-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", expand(path.read_text()))
    return {slug(h) for h in HEADING.findall(text)}


def links(path: Path) -> list[str]:
    return [t for t in LINK.findall(prose(expand(path.read_text())))
            if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n < 160, f"README.md has {n} lines; the details belong in docs/"


def test_readme_opens_with_the_commands():
    head = "\n".join(README.read_text().splitlines()[:40])
    assert "make run" in head and "make test" in head
    assert "make docs" in README.read_text()


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path):
    broken = []
    for target in links(page):
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_links_are_found():
    # the link pattern itself: images, links with anchors, links to the notebook
    found = links(DOCS / "visualize.md") + links(DOCS / "index.md")
    assert "figures/rollout.png" in found and "walkthrough.ipynb" in found
    assert any("#" in t for t in links(README))


def test_api_references_import():
    refs = sorted({r for page in PAGES for r in API_REF.findall(page.read_text())})
    assert "vitkit.model" in refs
    for name in refs:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and e.name.split(".")[0] == "vitkit":
                raise
            pytest.skip(f"{name} needs {e.name}, an optional dependency that is not installed")


def test_every_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def files(nav):
        for item in nav:
            for value in item.values() if isinstance(item, dict) else [item]:
                yield from files(value) if isinstance(value, list) else [value]

    listed = set(files(config["nav"]))
    missing = {p.name for p in PAGES} - listed
    assert not missing, f"pages not in mkdocs.yml's nav: {sorted(missing)}"
    assert not {f for f in listed if not (DOCS / f).exists()}
    assert "walkthrough.ipynb" in listed
