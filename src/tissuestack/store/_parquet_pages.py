"""The dictionary of a Parquet column chunk, read from its dictionary page alone.

A categorical column written by another tool (the reference's gene column, say) carries its categories only in
its data: pyarrow can hand them out only by decoding the whole column (20M transcripts: 40 MB of indices and
0.1-0.2 s, just to learn a few hundred names). In Parquet, each column chunk of such a column starts with a
dictionary page that lists its distinct values; the data pages that follow only refer to it, unless the writer
fell back to plain values when the dictionary grew too large. This module reads the page headers (a few hundred
bytes per page) and the dictionary page, and answers ``None`` whenever it cannot vouch for the result, so the
caller falls back to decoding the column:

- a data page not encoded against the dictionary (the fallback above), or an index page;
- a codec Arrow does not offer here, the legacy ``LZ4`` framing, encryption, a header it cannot parse;
- a column that is not a plain (non-nested) UTF-8 byte-array column.

The page header format is Thrift's compact protocol (``docs/parquet-pages.md`` sums up the fields used).
"""

from __future__ import annotations

from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["chunk_dictionary"]

# page types and encodings of the Parquet format
_DATA_PAGE, _DICTIONARY_PAGE, _DATA_PAGE_V2 = 0, 2, 3
_PLAIN, _PLAIN_DICTIONARY, _RLE_DICTIONARY = 0, 2, 8
_CODECS = {"SNAPPY": "snappy", "GZIP": "gzip", "ZSTD": "zstd", "LZ4_RAW": "lz4_raw", "BROTLI": "brotli"}
_HEADER_READ = 512  # bytes read for one page header (more when it is longer)


class _Unsupported(Exception):
    pass


class _Compact:
    """Just enough of Thrift's compact protocol to read a Parquet ``PageHeader``."""

    def __init__(self, buf: bytes):
        self.buf = buf
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.buf):
            raise IndexError("header runs past the bytes read")
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        shift = out = 0
        while True:
            b = self.byte()
            out |= (b & 0x7F) << shift
            if not b & 0x80:
                return out
            shift += 7
            if shift > 63:
                raise _Unsupported("varint too long")

    def zigzag(self) -> int:
        v = self.varint()
        return (v >> 1) ^ -(v & 1)

    def struct(self) -> dict[int, Any]:
        """The fields of a struct: integers and booleans as values, nested structs as dicts, others skipped."""
        fields: dict[int, Any] = {}
        last = 0
        while True:
            head = self.byte()
            if head == 0:
                return fields
            delta, kind = head >> 4, head & 0x0F
            fid = last + delta if delta else self.zigzag()
            last = fid
            fields[fid] = self.value(kind)

    def value(self, kind: int) -> Any:
        if kind in (1, 2):  # booleans are carried in the type nibble
            return kind == 1
        if kind == 3:
            return self.byte()
        if kind in (4, 5, 6):
            return self.zigzag()
        if kind == 7:
            self.skip(8)
            return None
        if kind == 8:
            self.skip(self.varint())
            return None
        if kind in (9, 10):  # list / set
            head = self.byte()
            size, elem = head >> 4, head & 0x0F
            if size == 15:
                size = self.varint()
            for _ in range(size):
                self.value(elem)
            return None
        if kind == 11:  # map
            size = self.varint()
            if size:
                types = self.byte()
                for _ in range(size):
                    self.value(types >> 4)
                    self.value(types & 0x0F)
            return None
        if kind == 12:
            return self.struct()
        raise _Unsupported(f"thrift type {kind}")

    def skip(self, n: int) -> None:
        if self.pos + n > len(self.buf):
            raise IndexError("header runs past the bytes read")
        self.pos += n


def _header(fh: IO[bytes], offset: int, limit: int) -> tuple[dict[int, Any], int]:
    """The page header at ``offset`` and its length in bytes."""
    size = _HEADER_READ
    while True:
        fh.seek(offset)
        buf = fh.read(min(size, max(limit - offset, 0)))
        reader = _Compact(buf)
        try:
            return reader.struct(), reader.pos
        except IndexError:
            if len(buf) < size or size > 1 << 24:
                raise _Unsupported("truncated page header") from None
            size *= 8


def _plain_strings(data: bytes, n: int) -> list[str]:
    out = []
    pos = 0
    for _ in range(n):
        if pos + 4 > len(data):
            raise _Unsupported("dictionary page shorter than its values")
        k = int.from_bytes(data[pos : pos + 4], "little")
        pos += 4
        if pos + k > len(data):
            raise _Unsupported("dictionary page shorter than its values")
        out.append(data[pos : pos + k].decode("utf-8"))
        pos += k
    return out


def chunk_dictionary(fh: IO[bytes], md: pq.FileMetaData, row_group: int, column: int) -> list[str] | None:
    """The distinct values of column ``column`` (index among the leaf columns) in row group ``row_group``, from
    its dictionary page, in dictionary order; ``None`` when the page headers do not prove that every value of the
    chunk is in that dictionary (see the module notes), or when the column is not a flat string column."""
    try:
        chunk = md.row_group(row_group).column(column)
        schema = md.schema.column(column)
        if chunk.physical_type != "BYTE_ARRAY" or schema.max_repetition_level != 0:
            return None
        if str(schema.logical_type) != "String" and schema.converted_type != "UTF8":
            return None
        if not chunk.has_dictionary_page or chunk.dictionary_page_offset is None:
            return None
        codec = chunk.compression
        if codec != "UNCOMPRESSED" and (codec not in _CODECS or not pa.Codec.is_available(_CODECS[codec])):
            return None
        start = int(chunk.dictionary_page_offset)
        end = start + int(chunk.total_compressed_size)
        values: list[str] | None = None
        pos = start
        while pos < end:
            header, length = _header(fh, pos, end)
            kind, raw_size, size = header.get(1), header.get(2), header.get(3)
            if not isinstance(size, int) or size < 0 or not isinstance(raw_size, int):
                return None
            body = pos + length
            if kind == _DICTIONARY_PAGE:
                spec = header.get(7) or {}
                if values is not None or spec.get(2, _PLAIN) not in (_PLAIN, _PLAIN_DICTIONARY):
                    return None
                fh.seek(body)
                data = fh.read(size)
                if len(data) != size:
                    return None
                if codec != "UNCOMPRESSED":
                    data = pa.decompress(data, decompressed_size=raw_size, codec=_CODECS[codec]).to_pybytes()
                values = _plain_strings(data, int(spec.get(1, 0)))
            elif kind == _DATA_PAGE:
                if (header.get(5) or {}).get(2) not in (_PLAIN_DICTIONARY, _RLE_DICTIONARY):
                    return None  # plain values after a dictionary overflow
            elif kind == _DATA_PAGE_V2:
                if (header.get(8) or {}).get(4) not in (_PLAIN_DICTIONARY, _RLE_DICTIONARY):
                    return None
            else:
                return None  # index pages or unknown types: not vouched for
            pos = body + size
        return values
    except (_Unsupported, OSError, ValueError, UnicodeDecodeError, pa.ArrowException):
        return None
