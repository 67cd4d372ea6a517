"""Citations of the repository's documents in the source (``docs/format.md §5.3``) must point at real sections."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
DOCS = ROOT / "docs"

# "docs/format.md §5.3", "``docs/vendors.md`` §6.4 and §7.8", "docs/format.md §5.2, §6.1"
CITATION = re.compile(r"docs/(?P<file>[\w.-]+\.md)`{0,2}(?P<sections>(?:[ ,]*(?:and )?§\d+(?:\.\d+)*)*)")
SECTION = re.compile(r"§(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)[.\s]", re.MULTILINE)
# documents outside the repository that the source must no longer refer to
OUTSIDE = re.compile(r"shared/|VENDOR_FORMATS|(?<![\w/])FORMAT\.md|(?<![\w/])DESIGN\.md")


def _citations() -> list[tuple[str, int, str, str]]:
    """(source file, line, document, section) for every cited section in ``src``."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in CITATION.finditer(line):
                for section in SECTION.findall(match["sections"]):
                    found.append((str(path.relative_to(ROOT)), lineno, match["file"], section))
    return found


def _sections(document: Path) -> set[str]:
    """Section numbers of the markdown headings (``## 5. Points``, ``### 5.3 Columns``)."""
    return set(HEADING.findall(document.read_text(encoding="utf-8")))


def test_citations_are_found():
    cited = {(doc, section) for _, _, doc, section in _citations()}
    assert ("format.md", "5.3") in cited
    assert ("vendors.md", "6.4") in cited


def test_every_cited_section_exists():
    missing = []
    headings: dict[str, set[str]] = {}
    for source, lineno, doc, section in _citations():
        document = DOCS / doc
        if not document.is_file():
            missing.append(f"{source}:{lineno}: docs/{doc} does not exist")
            continue
        if doc not in headings:
            headings[doc] = _sections(document)
        if section not in headings[doc]:
            missing.append(f"{source}:{lineno}: docs/{doc} has no heading §{section}")
    assert not missing, "\n".join(missing)


def test_no_references_to_outside_documents():
    bad = [
        f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py"))
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "line, expected",
    [
        ("(docs/format.md §5.2, §6.1)", [("format.md", "5.2"), ("format.md", "6.1")]),
        ("``docs/vendors.md`` §6.8 and §7.8: one", [("vendors.md", "6.8"), ("vendors.md", "7.8")]),
        ("(docs/format.md §7.2: present", [("format.md", "7.2")]),
        ("(docs/format.md §0)", [("format.md", "0")]),
    ],
)
def test_citation_pattern(line, expected):
    got = [(m["file"], s) for m in CITATION.finditer(line) for s in SECTION.findall(m["sections"])]
    assert got == expected
