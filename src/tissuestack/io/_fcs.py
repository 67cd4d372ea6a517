"""Flow Cytometry Standard (FCS 2.0 / 3.0 / 3.1 / 3.2) files: a small reader and writer.

An FCS file is a 58-byte HEADER (``FCS3.1``, four spaces, then six 8-character ASCII byte offsets: TEXT start and
end, DATA start and end, ANALYSIS start and end, inclusive), a TEXT segment of delimiter-separated key/value pairs
(the first byte is the delimiter; a delimiter inside a value is doubled), and a DATA segment of ``$TOT`` events x
``$PAR`` parameters in list mode. Offsets above 99,999,999 are written as 0 in the HEADER and given by
``$BEGINDATA``/``$ENDDATA`` in TEXT. Parameter ``n`` has the short name ``$PnN`` and optionally a long name
``$PnS`` (the marker, for CODEX). Data types: ``F`` (float32), ``D`` (float64), ``I`` (unsigned integers of
``$PnB`` bits, 8/16/32/64, possibly different per parameter); byte order from ``$BYTEORD``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tissuestack.errors import ReaderError

__all__ = ["FcsData", "read_fcs", "write_fcs"]

FCS_VERSIONS = ("FCS2.0", "FCS3.0", "FCS3.1", "FCS3.2")
_HEADER_LEN = 58


@dataclass(frozen=True)
class FcsData:
    """The parsed content of an FCS file."""

    version: str
    names: list[str]
    """``$PnN`` of each parameter (short names, e.g. ``cyc001_ch001``)."""
    markers: list[str | None]
    """``$PnS`` of each parameter (long names, e.g. ``CD45``), None where absent."""
    data: np.ndarray
    """Events x parameters (float32/float64 for ``F``/``D`` files, the stored integers for ``I`` files)."""
    text: dict[str, str]
    """Every TEXT keyword (upper-cased) and its value."""


def _parse_text(raw: bytes, path: Path) -> dict[str, str]:
    if not raw:
        raise ReaderError(f"{path}: empty FCS TEXT segment; expected delimiter-separated keywords")
    delim = raw[:1]
    body = raw[1:]
    # split on single delimiters; a doubled delimiter is an escaped one inside a value
    placeholder = b"\x00\x01"
    parts = body.replace(delim + delim, placeholder).split(delim)
    if parts and parts[-1] == b"":
        parts = parts[:-1]
    if len(parts) % 2:
        raise ReaderError(
            f"{path}: the FCS TEXT segment has an odd number of fields ({len(parts)}); expected keyword/value "
            "pairs (truncated or corrupt file?)"
        )
    text: dict[str, str] = {}
    for key, value in zip(parts[::2], parts[1::2], strict=True):
        k = key.replace(placeholder, delim).decode("latin-1").strip().upper()
        text[k] = value.replace(placeholder, delim).decode("utf-8", errors="replace")
    return text


def _int(text: dict[str, str], key: str, path: Path) -> int:
    if key not in text:
        raise ReaderError(f"{path}: the FCS TEXT segment has no {key} keyword; expected it in every FCS file")
    try:
        return int(text[key].strip())
    except ValueError as err:
        raise ReaderError(f"{path}: FCS keyword {key} is {text[key]!r}; expected an integer") from err


def _byteorder(text: dict[str, str], path: Path) -> str:
    order = text.get("$BYTEORD", "").replace(" ", "")
    if order in ("1,2,3,4", "1,2", "1,2,3,4,5,6,7,8"):
        return "<"
    if order in ("4,3,2,1", "2,1", "8,7,6,5,4,3,2,1"):
        return ">"
    raise ReaderError(
        f"{path}: FCS $BYTEORD is {text.get('$BYTEORD')!r}; expected 1,2,3,4 (little endian) or 4,3,2,1 (big endian)"
    )


def _dtype(text: dict[str, str], n_par: int, path: Path) -> np.dtype:
    kind = text.get("$DATATYPE", "").strip().upper()
    order = _byteorder(text, path)
    if kind in ("F", "D"):
        return np.dtype(f"{order}f{4 if kind == 'F' else 8}")
    if kind == "I":
        bits = [_int(text, f"$P{i}B", path) for i in range(1, n_par + 1)]
        bad = [b for b in bits if b not in (8, 16, 32, 64)]
        if bad:
            raise ReaderError(
                f"{path}: integer FCS parameters of {bad[0]} bits; expected 8, 16, 32 or 64 bits ($PnB)"
            )
        if len(set(bits)) == 1:
            return np.dtype(f"{order}u{bits[0] // 8}")
        return np.dtype([(f"p{i}", f"{order}u{b // 8}") for i, b in enumerate(bits)])
    raise ReaderError(
        f"{path}: FCS $DATATYPE is {text.get('$DATATYPE')!r}; expected F (float32), D (float64) or I (integer)"
    )


def read_fcs(path: str | os.PathLike) -> FcsData:
    """Read an FCS file's parameters and list-mode events.

    Raises
    ------
    ReaderError
        The file is missing, not FCS, of an unknown version, truncated, or uses an unsupported data layout; the
        message names the file and what was expected.
    """
    p = Path(path)
    if not p.is_file():
        raise ReaderError(f"{p}: FCS file not found")
    size = p.stat().st_size
    with open(p, "rb") as fh:
        header = fh.read(_HEADER_LEN)
        if len(header) < _HEADER_LEN or not header.startswith(b"FCS"):
            raise ReaderError(
                f"{p}: not an FCS file (expected a 58-byte header starting with 'FCS3.0' or 'FCS3.1')"
            )
        version = header[:6].decode("ascii", errors="replace")
        if version not in FCS_VERSIONS:
            raise ReaderError(
                f"{p}: unknown FCS version {version!r}; expected one of {', '.join(FCS_VERSIONS)}"
            )
        try:
            offsets = [int(header[10 + 8 * k : 18 + 8 * k].strip() or 0) for k in range(6)]
        except ValueError as err:
            raise ReaderError(f"{p}: the FCS header offsets are not integers ({header[10:58]!r})") from err
        text_start, text_end, data_start, data_end = offsets[:4]
        if text_start < _HEADER_LEN or text_end < text_start or text_end >= size:
            raise ReaderError(
                f"{p}: the FCS TEXT segment [{text_start}, {text_end}] lies outside the file of {size} bytes "
                "(truncated file?)"
            )
        fh.seek(text_start)
        text = _parse_text(fh.read(text_end - text_start + 1), p)
        if data_start == 0 and data_end == 0:
            data_start, data_end = _int(text, "$BEGINDATA", p), _int(text, "$ENDDATA", p)
        mode = text.get("$MODE", "L").strip().upper()
        if mode != "L":
            raise ReaderError(f"{p}: FCS $MODE is {mode!r}; expected L (list mode)")
        n_par = _int(text, "$PAR", p)
        n_events = _int(text, "$TOT", p)
        dtype = _dtype(text, n_par, p)
        per_event = dtype.itemsize if dtype.names else dtype.itemsize * n_par
        expected = n_events * per_event
        available = max(0, min(data_end, size - 1) - data_start + 1) if n_events else 0
        if data_end >= size or available < expected:
            raise ReaderError(
                f"{p}: the FCS DATA segment holds {available} bytes but $TOT={n_events} events x $PAR={n_par} "
                f"parameters need {expected} (truncated file?)"
            )
        fh.seek(data_start)
        raw = fh.read(expected)
    if dtype.names:
        events = np.frombuffer(raw, dtype=dtype, count=n_events)
        data = (
            np.column_stack([events[f].astype(np.uint64) for f in dtype.names])
            if n_events
            else np.empty((0, n_par), np.uint64)
        )
    else:
        data = np.frombuffer(raw, dtype=dtype, count=n_events * n_par).reshape(n_events, n_par)
        data = data.astype(dtype.newbyteorder("="))
    names = []
    for i in range(1, n_par + 1):
        if f"$P{i}N" not in text:
            raise ReaderError(
                f"{p}: FCS parameter {i} has no $P{i}N (short name); expected one per parameter"
            )
        names.append(text[f"$P{i}N"].strip())
    markers = [
        text[f"$P{i}S"].strip() if text.get(f"$P{i}S", "").strip() else None for i in range(1, n_par + 1)
    ]
    return FcsData(version=version, names=names, markers=markers, data=data, text=text)


def _escape(value: str, delim: str) -> str:
    return value.replace(delim, delim + delim)


def write_fcs(
    path: str | os.PathLike,
    data: np.ndarray,
    names: Sequence[str],
    markers: Sequence[str | None] | None = None,
    *,
    version: str = "FCS3.1",
    datatype: str = "F",
    byteorder: str = "<",
    extra: dict[str, str] | None = None,
) -> Path:
    """Write events x parameters ``data`` as an FCS file (list mode, one data type for every parameter).

    ``datatype`` is ``"F"`` (float32), ``"D"`` (float64) or ``"I"`` (uint32); ``byteorder`` ``"<"`` or ``">"``.
    """
    if version not in FCS_VERSIONS:
        raise ValueError(f"version must be one of {FCS_VERSIONS}, got {version!r}")
    data = np.asarray(data)
    n_events, n_par = data.shape
    if len(names) != n_par:
        raise ValueError(f"{len(names)} names for {n_par} parameters")
    dtype = {"F": "f4", "D": "f8", "I": "u4"}[datatype]
    payload = np.ascontiguousarray(data, dtype=np.dtype(byteorder + dtype)).tobytes()
    bits = np.dtype(dtype).itemsize * 8
    delim = "/"
    keys: dict[str, str] = {
        "$BYTEORD": "1,2,3,4" if byteorder == "<" else "4,3,2,1",
        "$DATATYPE": datatype,
        "$MODE": "L",
        "$NEXTDATA": "0",
        "$PAR": str(n_par),
        "$TOT": str(n_events),
    }
    for i, name in enumerate(names, start=1):
        keys[f"$P{i}N"] = str(name)
        keys[f"$P{i}B"] = str(bits)
        keys[f"$P{i}E"] = "0,0"
        keys[f"$P{i}R"] = str(int(np.nanmax(data[:, i - 1])) + 1 if n_events else 1)
        if markers is not None and markers[i - 1] is not None:
            keys[f"$P{i}S"] = str(markers[i - 1])
    keys.update(extra or {})

    def text_bytes(begin: int, end: int) -> bytes:
        items = {**keys, "$BEGINANALYSIS": "0", "$ENDANALYSIS": "0", "$BEGINSTEXT": "0", "$ENDSTEXT": "0"}
        items["$BEGINDATA"], items["$ENDDATA"] = str(begin), str(end)
        body = "".join(f"{delim}{_escape(k, delim)}{delim}{_escape(v, delim)}" for k, v in items.items())
        return (body + delim).encode("utf-8")

    # the TEXT length depends on the data offsets written into it: iterate to a fixed point
    text_start = _HEADER_LEN
    data_start = text_start + len(text_bytes(0, 0))
    for _ in range(5):
        text = text_bytes(data_start, data_start + len(payload) - 1)
        new_start = text_start + len(text)
        if new_start == data_start:
            break
        data_start = new_start
    text_end = text_start + len(text) - 1
    data_end = data_start + len(payload) - 1 if payload else 0
    fields = [text_start, text_end, data_start if payload else 0, data_end, 0, 0]
    header = version.encode("ascii") + b"    " + b"".join(f"{v:>8d}".encode("ascii") for v in fields)
    p = Path(path)
    p.write_bytes(header + text + payload)
    return p
