"""The id rows of a sealed segment of the memory index: written once, read memory-mapped.

A namespace's ``IdMap`` (``idmap.py``) costs ~85 bytes of private memory per memory and grew
with every memory the namespace held, sealed or not: a 1 GB file (609,438 memories) left ~52 MB
of it behind (issue 15). When a segment is sealed its rows are written to a file beside the
segment's graph (``{stem}.{first key}.sids``) and the growing map starts empty; lookups of a
sealed key or id read the file through a read-only mapping, whose pages are the kernel's page
cache (read in as lookups touch them, dropped under memory pressure). What stays in private
memory per sealed row is one byte: whether it was removed since (a removal or an upsert of a
sealed memory; the graph cannot change, searches skip it). The removed keys are saved with the
namespace's growing id map, so a sealed file is never written twice.

File (all integers little-endian; arrays start 8-byte aligned): ``MAGIC``, a 4-byte header
length, a JSON header (format, namespace, first and end key, count, blob size, the hash
function, SHA-256 of the payload), zero padding to a multiple of 8, then the payload:

* ``keys`` uint64[count], ascending, in [first, end);
* ``ends`` uint64[count], where each id's UTF-8 bytes end in the blob (the row before's end is
  where they start);
* ``hashes`` uint64[count], the ids' ``hash_id``, sorted, and ``rows`` uint32[count] alongside
  (the row of each hash), zero-padded to a multiple of 8;
* the ids' bytes end to end.

28 bytes per row plus the id's bytes, none of them private. ``open`` checks the header against
the manifest's listing, the size and the checksum (read through the file, not the mapping) and
the arrays' order, then tells the kernel the checked pages are not needed: a load leaves none
of a segment's rows resident.
"""

from __future__ import annotations

import hashlib
import mmap
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
import orjson

from gateway.memory import idmap
from gateway.memory.idmap import MERGE_AT, U64

MAGIC = b"SOPHSID\x01"
FORMAT = 1
HASH = "blake2b-64"  # idmap.hash_id: stored hashes are only valid for this function
SUFFIX = ".sids"
_READ_BYTES = 1 << 20


def _aligned(size: int) -> int:
    return (size + 7) & ~7


def _hashes_of(blob: bytes | memoryview, ends: U64) -> U64:
    """``hash_id`` of every row, computed a slice at a time (no bytes object per row alive)."""
    count = len(ends)
    hashes = np.zeros(count, dtype=np.uint64)
    view = memoryview(blob)
    for lo in range(0, count, MERGE_AT):
        hi = min(count, lo + MERGE_AT)
        stops = ends[lo:hi].tolist()
        starts = [int(ends[lo - 1]) if lo else 0, *stops[:-1]]
        hashes[lo:hi] = idmap.hash_ids(
            [view[s:e].tobytes() for s, e in zip(starts, stops, strict=True)], hi - lo
        )
    return hashes


def write(
    file: BinaryIO,
    namespace: str,
    first: int,
    end: int,
    keys: U64,
    lens: npt.NDArray[Any],
    blob: bytes | memoryview,
) -> None:
    """Write the rows (ascending ``keys`` in [first, end), each id's byte length and the ids'
    bytes end to end) as a sealed id file."""
    count = len(keys)
    ends = np.cumsum(lens, dtype=np.uint64)
    if count and (int(keys[0]) < first or int(keys[-1]) >= end or int(ends[-1]) != len(blob)):
        raise ValueError("rows outside the segment's keys, or lengths that do not add up")
    hashes = _hashes_of(blob, ends)
    order = np.argsort(hashes, kind="stable")
    rows = order.astype("<u4").tobytes()
    payload = [
        keys.astype("<u8").tobytes(),
        ends.astype("<u8").tobytes(),
        hashes[order].astype("<u8").tobytes(),
        rows + b"\0" * (_aligned(len(rows)) - len(rows)),
        blob,
    ]
    header = orjson.dumps(
        {
            "format": FORMAT,
            "namespace": namespace,
            "first": first,
            "end": end,
            "count": count,
            "blob_bytes": len(blob),
            "hash": HASH,
            "sha256": idmap.sha256_of(payload),
        }
    )
    head = MAGIC + len(header).to_bytes(4, "little") + header
    file.write(head + b"\0" * (_aligned(len(head)) - len(head)))
    for piece in payload:
        file.write(piece)


class SealedIds:
    """The rows of one sealed segment, mapped read-only, and which of them were removed since."""

    __slots__ = ("_blob", "_ends", "_hashes", "_keys", "_removed", "_rows", "count", "end", "first", "live")

    def __init__(self, path: Path, namespace: str, first: int, end: int) -> None:
        """Open ``path``; ValueError when it is not the whole, intact id file of keys [first,
        end) of ``namespace`` (OSError when it cannot be read)."""
        with open(path, "rb") as f:
            header, offset = self._header(f)
            if (
                header.get("namespace") != namespace
                or header.get("first") != first
                or header.get("end") != end
            ):
                raise ValueError(
                    f"{path.name}: the ids of {header.get('namespace')!r} "
                    f"[{header.get('first')}, {header.get('end')}), listed as [{first}, {end})"
                )
            count, blob_bytes = int(header["count"]), int(header["blob_bytes"])
            if count < 0 or blob_bytes < 0:
                raise ValueError(f"{path.name}: negative sizes")
            size = offset + 24 * count + _aligned(4 * count) + blob_bytes
            if size != f.seek(0, 2):
                raise ValueError(f"{path.name}: {f.tell()} bytes where the header says {size} (truncated?)")
            f.seek(offset)
            digest = hashlib.sha256()
            while chunk := f.read(_READ_BYTES):
                digest.update(chunk)
            if digest.hexdigest() != header.get("sha256"):
                raise ValueError(f"{path.name}: checksum mismatch")
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # never empty: the header
        self.first, self.end, self.count = first, end, count
        mapped.madvise(mmap.MADV_RANDOM)  # lookups land anywhere: no read-ahead around them
        at = offset
        self._keys: U64 = np.frombuffer(mapped, dtype="<u8", count=count, offset=at)
        self._ends: U64 = np.frombuffer(mapped, dtype="<u8", count=count, offset=at + 8 * count)
        self._hashes: U64 = np.frombuffer(mapped, dtype="<u8", count=count, offset=at + 16 * count)
        self._rows = np.frombuffer(mapped, dtype="<u4", count=count, offset=at + 24 * count)
        self._blob = memoryview(mapped)[at + 24 * count + _aligned(4 * count) :]
        self._check(path.name, blob_bytes)
        mapped.madvise(mmap.MADV_DONTNEED)  # checked: give the pages back (read again on use)
        self._removed = np.zeros(count, dtype=np.bool_)
        self.live = count

    @staticmethod
    def _header(f: BinaryIO) -> tuple[dict[str, Any], int]:
        if f.read(len(MAGIC)) != MAGIC:
            raise ValueError("not a sealed id file of this format")
        length = int.from_bytes(f.read(4), "little")
        header = orjson.loads(f.read(length))
        if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("hash") != HASH:
            raise ValueError("not a sealed id file of this format")
        return header, _aligned(len(MAGIC) + 4 + length)

    def _check(self, name: str, blob_bytes: int) -> None:
        keys, ends, count = self._keys, self._ends, self.count
        if not count:
            return
        if int(keys[0]) < self.first or int(keys[-1]) >= self.end or np.any(keys[1:] <= keys[:-1]):
            raise ValueError(f"{name}: keys not ascending in [{self.first}, {self.end})")
        if int(ends[-1]) != blob_bytes or np.any(ends[1:] < ends[:-1]):
            raise ValueError(f"{name}: id lengths do not add up to the ids")
        if np.any(self._hashes[1:] < self._hashes[:-1]) or int(self._rows.max()) >= count:
            raise ValueError(f"{name}: hash table out of order")

    def __len__(self) -> int:
        return self.live

    def _id_bytes(self, row: int) -> bytes:
        start = int(self._ends[row - 1]) if row else 0
        return self._blob[start : int(self._ends[row])].tobytes()

    def _row(self, key: int) -> int | None:
        """The live row of ``key``, None when the segment does not hold it (or it was removed)."""
        row = int(np.searchsorted(self._keys, np.uint64(key)))
        if row < self.count and int(self._keys[row]) == key and not self._removed[row]:
            return row
        return None

    def ids_of(self, keys: U64) -> list[str | None]:
        """The id of each key (each in [first, end)), None for a removed or unknown one."""
        if not self.count:
            return [None] * len(keys)
        rows = np.minimum(np.searchsorted(self._keys, keys), self.count - 1)
        held = ((self._keys[rows] == keys) & ~self._removed[rows]).tolist()
        return [
            self._id_bytes(row).decode() if ok else None for ok, row in zip(held, rows.tolist(), strict=True)
        ]

    def keys_of(self, encoded: list[bytes], hashes: U64) -> list[int]:
        """The live keys of those ids (UTF-8 bytes, with their ``hash_id``) the segment holds."""
        if not self.count:
            return []
        found: list[int] = []
        los = np.searchsorted(self._hashes, hashes, side="left").tolist()
        his = np.searchsorted(self._hashes, hashes, side="right").tolist()
        for data, lo, hi in zip(encoded, los, his, strict=True):
            for row in self._rows[lo:hi].tolist():
                if not self._removed[row] and self._id_bytes(row) == data:
                    found.append(int(self._keys[row]))
                    break
        return found

    def remove(self, keys: list[int]) -> int:
        """Mark the rows of ``keys`` removed (unknown or already removed ones are ignored)."""
        removed = 0
        for key in keys:
            row = self._row(key)
            if row is not None:
                self._removed[row] = True
                removed += 1
        self.live -= removed
        return removed

    def removed_keys(self) -> U64:
        """The keys removed since sealing, ascending (a copy: what a save writes)."""
        return np.asarray(self._keys[self._removed], dtype=np.uint64)

    def restore_removed(self, keys: U64) -> None:
        """Mark ``keys`` removed as a save recorded them; ValueError for a key not held."""
        if not len(keys):
            return
        rows = np.minimum(np.searchsorted(self._keys, keys), max(self.count - 1, 0))
        if not self.count or not np.all(self._keys[rows] == keys):
            raise ValueError(f"removed keys [{self.first}, {self.end}) that the segment does not hold")
        self._removed[rows] = True
        self.live = self.count - int(np.count_nonzero(self._removed))

    def keys(self) -> U64:
        """The live keys, ascending (a copy)."""
        return np.asarray(self._keys[~self._removed], dtype=np.uint64)

    def items(self) -> list[tuple[str, int]]:
        """(id, key) of every live row, in key order (for tests and tools)."""
        rows = np.flatnonzero(~self._removed).tolist()
        return [(self._id_bytes(r).decode(), int(self._keys[r])) for r in rows]
