"""Naming rules for elements, tables and table keys (docs/format.md §1.5), and a sanitizer."""

from __future__ import annotations

import re
from collections.abc import Iterable

from tissuestack.errors import ValidationError

__all__ = ["check_name", "check_unique_names", "is_valid_name", "name_problem", "sanitize_name"]

_ALLOWED_PUNCTUATION = frozenset("_-.")


def name_problem(name: object) -> str | None:
    """Why ``name`` is not a valid element name, or ``None`` when it is valid."""
    if not isinstance(name, str):
        return f"must be a string, got {type(name).__name__}"
    if name == "":
        return "must not be empty"
    if name in (".", ".."):
        return "must not be '.' or '..'"
    if name.startswith("__"):
        return "must not start with '__'"
    bad = sorted({ch for ch in name if not (ch.isalnum() or ch in _ALLOWED_PUNCTUATION)})
    if bad:
        shown = ", ".join(repr(ch) for ch in bad)
        return f"may only contain letters, digits, '_', '-' and '.'; found {shown}"
    return None


def is_valid_name(name: object) -> bool:
    return name_problem(name) is None


def check_name(name: object, what: str = "element name") -> None:
    """Raise a ``ValidationError`` naming ``what`` if ``name`` breaks the naming rules."""
    problem = name_problem(name)
    if problem is not None:
        raise ValidationError(f"invalid {what} {name!r}: it {problem}")


def check_unique_names(names: Iterable[str], what: str = "element names") -> None:
    """Names must be unique case-insensitively."""
    seen: dict[str, str] = {}
    for name in names:
        key = name.lower()
        if key in seen and seen[key] != name:
            raise ValidationError(
                f"{what} must be unique ignoring case: {seen[key]!r} and {name!r} clash "
                "(stores on case-insensitive file systems could not hold both)"
            )
        if key in seen:
            raise ValidationError(f"duplicate {what[:-1] if what.endswith('s') else what} {name!r}")
        seen[key] = name


def sanitize_name(name: object, taken: Iterable[str] = ()) -> str:
    """Turn ``name`` into a valid element name, unique (ignoring case) among ``taken``.

    Invalid characters become ``_`` and runs of ``_`` collapse to one (so no name starts with ``__``); names
    that are empty or only dots and underscores become ``"element"``. A clash with ``taken`` gets a numeric suffix ``_1``, ``_2``, ...

    >>> sanitize_name("my cells (v2)")
    'my_cells_v2_'
    >>> sanitize_name("Cells", taken=["cells"])
    'Cells_1'
    """
    text = str(name)
    out = "".join(ch if (ch.isalnum() or ch in _ALLOWED_PUNCTUATION) else "_" for ch in text)
    out = re.sub(r"_{2,}", "_", out)
    if set(out) <= {".", "_"}:
        out = "element"
    taken_lower = {t.lower() for t in taken}
    candidate, i = out, 0
    while candidate.lower() in taken_lower:
        i += 1
        candidate = f"{out}_{i}"
    return candidate
