"""A small reader for R's XDR serialisation (``saveRDS`` / lazy-load databases), no R needed.

Enough of the format for data packages such as janeaustenr: vectors (logical, integer,
double, character, list), pairlists, symbols, attributes and references. R's own
description: "R Internals", section 1.8 (serialization formats).

A lazy-load database is two files: ``<name>.rdx`` (a compressed serialised list
``variables = list(<object> = c(offset, length))``) and ``<name>.rdb`` (records; each record
is a 4-byte big-endian uncompressed length + a zlib stream of one serialised object).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

# SEXP types (R Internals, "SEXPTYPEs")
NILSXP, SYMSXP, LISTSXP, LGLSXP, INTSXP, REALSXP, STRSXP, VECSXP, EXPRSXP = 0, 1, 2, 10, 13, 14, 16, 19, 20
CHARSXP = 9
REFSXP, NILVALUE_SXP, EMPTYENV_SXP, BASEENV_SXP, GLOBALENV_SXP = 255, 254, 242, 241, 253
NA_INTEGER = -(2**31)


class RSerializeError(ValueError):
    """The bytes are not an R serialisation this reader understands."""


class RList(list):
    """An R list (VECSXP) or pairlist: a Python list that also carries R attributes."""

    attributes: dict

    def __init__(self, items=(), attributes: dict | None = None):
        super().__init__(items)
        self.attributes = attributes or {}

    def named(self) -> dict:
        """{name: element} from the ``names`` attribute."""
        return dict(zip(self.attributes.get("names", []), self))


class _XDRReader:
    def __init__(self, data: bytes):
        self.data, self.pos, self.refs = data, 0, []

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise RSerializeError("truncated R serialisation")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:  # long vector: two more ints
            upper, lower = self.int(), self.int()
            n = (upper << 32) + (lower & 0xFFFFFFFF)
        return n

    def header(self) -> None:
        if self.take(2) != b"X\n":
            raise RSerializeError("not an XDR (binary, big-endian) R serialisation")
        version = self.int()
        self.int(), self.int()  # R version that wrote it, minimal R version to read it
        if version == 3:
            self.take(self.int())  # native encoding name
        elif version != 2:
            raise RSerializeError(f"unsupported serialisation version {version}")

    def item(self):
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if kind == NILVALUE_SXP or kind in (EMPTYENV_SXP, BASEENV_SXP, GLOBALENV_SXP):
            return None
        if kind == REFSXP:
            index = flags >> 8 or self.int()
            return self.refs[index - 1]
        if kind == SYMSXP:
            symbol = self.item()  # a CHARSXP
            self.refs.append(symbol)
            return symbol
        if kind == LISTSXP:
            return self.pairlist(has_attr, has_tag)
        if kind == CHARSXP:
            n = self.int()
            return None if n == -1 else self.take(n).decode("latin-1" if flags & (1 << 14) else "utf-8")
        value = self.vector(kind)
        if has_attr:
            attributes = self.item()
            if isinstance(value, RList):
                value.attributes = attributes.named() if isinstance(attributes, RList) else {}
        return value

    def vector(self, kind: int):
        n = self.length()
        if kind in (LGLSXP, INTSXP):
            return [None if v == NA_INTEGER else v for v in struct.unpack(f">{n}i", self.take(4 * n))]
        if kind == REALSXP:
            return list(struct.unpack(f">{n}d", self.take(8 * n)))
        if kind == STRSXP:
            return [self.item() for _ in range(n)]
        if kind in (VECSXP, EXPRSXP):
            return RList(self.item() for _ in range(n))
        raise RSerializeError(f"unsupported SEXP type {kind}")

    def pairlist(self, has_attr: bool, has_tag: bool) -> RList:
        """A pairlist as RList with ``names`` from the tags (iterating down the CDRs)."""
        items, names = [], []
        while True:
            if has_attr:
                self.item()
            names.append(self.item() if has_tag else "")
            items.append(self.item())
            flags = self.int()  # the CDR: another LISTSXP cell, or the end
            if flags & 0xFF != LISTSXP:
                if flags & 0xFF != NILVALUE_SXP:
                    raise RSerializeError("pairlist ending in something other than NULL")
                return RList(items, {"names": names})
            has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))


def unserialize(data: bytes):
    """One R object from its XDR serialisation (gzip-compressed or plain)."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    reader = _XDRReader(data)
    reader.header()
    return reader.item()


def read_lazyload_db(prefix: str | Path) -> dict:
    """{object name: object} of the lazy-load database ``<prefix>.rdx`` / ``<prefix>.rdb``."""
    prefix = Path(prefix)
    index = unserialize(prefix.with_suffix(".rdx").read_bytes())
    if not isinstance(index, RList) or "variables" not in index.named():
        raise RSerializeError(f"{prefix}.rdx: not a lazy-load index (no 'variables')")
    blob = prefix.with_suffix(".rdb").read_bytes()
    objects = {}
    for name, (offset, length) in index.named()["variables"].named().items():
        record = blob[offset : offset + length]
        expected = struct.unpack(">I", record[:4])[0]
        data = zlib.decompress(record[4:])
        if len(data) != expected:
            raise RSerializeError(f"{prefix}.rdb: record '{name}' holds {len(data)} bytes, header says {expected}")
        objects[name] = unserialize(data)
    return objects
