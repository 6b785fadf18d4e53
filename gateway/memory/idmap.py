"""Memory id <-> usearch key for the growing segment of one namespace of the index (a sealed
segment's rows are in a file of their own: ``sealed_ids.py``), without a Python object per memory.

Two Python dicts (id -> key, key -> id) cost ~250 bytes per memory in dict entries, a str and an
int, and those long-lived small objects, allocated among the ingest pipeline's short-lived ones,
pin pymalloc's arenas (issue 15). Here the map is a handful of numpy arrays and one bytearray:

* **rows**, in key order (keys come from a counter and only grow, so appending keeps them
  sorted): ``_keys`` (uint64), ``_starts`` (offset of the id in ``_blob``), ``_lens`` (its length
  in bytes, ``~length`` once removed) and ``_blob``, the ids' UTF-8 bytes end to end. Key -> id
  is a ``searchsorted`` on ``_keys``. 20 bytes per row plus the id's bytes.
* **id -> key**: ``_hashes`` (64-bit hashes of ids, sorted) with ``_hash_keys`` alongside, and
  ``_recent``, a dict of the ids added since the last merge, merged into the sorted arrays once
  it holds ``MERGE_AT`` of them (one ``np.insert``, linear). A hash match is confirmed by
  comparing the row's stored bytes with the id (two ids may share a hash). 16 bytes per row.
* **removal** marks the row (``_lens`` negative) and drops the id from ``_recent``; the hash
  entry of a removed row stays until compaction and is skipped. When removed rows outnumber live
  ones, ``_compact`` drops them from every array and from the blob.

An upsert is a removal of the old key plus an addition under a new one (``HnswIndex._add_chunk``),
so the same id may have several hash entries of which one only is live. The caller serialises
every call (``HnswIndex`` holds the namespace's lock); ``len()`` may be read without it.

On disk (``to_bytes``/``from_bytes``): ``MAGIC``, a 4-byte header length, a JSON header (format,
namespace, next_key, count, blob size, removed, SHA-256 of the payload), then the live rows' keys
(uint64 little-endian), lengths (uint32) and id bytes, then the keys of the namespace's sealed
segments (``sealed_ids.py``) removed since they were sealed (uint64; their files are never
rewritten, so the growing segment's map records them). Hashes are recomputed at load, so the file does
not depend on the hash function.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Sequence
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
import orjson

MAGIC = b"SOPHIDS\x02"
FORMAT = 3  # 3 adds the removed keys of sealed segments (sealed_ids.py); 2 had none
FORMATS_READ = (2, 3)
MERGE_AT = 4096  # ids added before _recent is merged into the sorted hash arrays
_MIN_ROWS = 64

U64 = npt.NDArray[np.uint64]


def hash_id(data: bytes) -> int:
    """A 64-bit hash of an id's UTF-8 bytes (collisions are handled: tests force them)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def sha256_of(pieces: Iterable[bytes | memoryview]) -> str:
    """The SHA-256 (hex) of the pieces end to end: a file's checksum, without joining them."""
    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(piece)
    return digest.hexdigest()


def hash_ids(encoded: Iterable[bytes], count: int) -> U64:
    return np.fromiter((hash_id(e) for e in encoded), dtype=np.uint64, count=count)


class IdMap:
    """The two-way map of one namespace; see the module docstring."""

    __slots__ = ("_blob", "_hash_keys", "_hashes", "_keys", "_lens", "_recent", "_rows", "_starts", "live")

    def __init__(self) -> None:
        self._keys: U64 = np.zeros(_MIN_ROWS, dtype=np.uint64)
        self._starts = np.zeros(_MIN_ROWS, dtype=np.int64)
        self._lens = np.zeros(_MIN_ROWS, dtype=np.int32)
        self._rows = 0  # rows in use, live and removed
        self._blob = bytearray()
        self._hashes: U64 = np.zeros(0, dtype=np.uint64)
        self._hash_keys: U64 = np.zeros(0, dtype=np.uint64)
        self._recent: dict[str, int] = {}
        self.live = 0

    def __len__(self) -> int:
        return self.live

    # ----- lookups

    def key_of(self, memory_id: str) -> int | None:
        """The key of ``memory_id``, None when the namespace does not hold it."""
        key = self._recent.get(memory_id)
        if key is not None:
            return key
        if not len(self._hashes):
            return None
        encoded = memory_id.encode()
        target = np.uint64(hash_id(encoded))
        lo = int(np.searchsorted(self._hashes, target, side="left"))
        hi = int(np.searchsorted(self._hashes, target, side="right"))
        for candidate in self._hash_keys[lo:hi].tolist():
            row = self._row(candidate)
            if row is not None and self._bytes(row) == encoded:
                return int(candidate)
        return None

    def keys_of(self, ids: Iterable[str]) -> list[int]:
        """Keys of those of ``ids`` the namespace holds (hashed and searched as one batch)."""
        found: list[int] = []
        rest: list[bytes] = []
        for memory_id in ids:
            key = self._recent.get(memory_id)
            if key is not None:
                found.append(key)
            elif len(self._hashes):
                rest.append(memory_id.encode())
        if not rest:
            return found
        targets = hash_ids(rest, len(rest))
        los = np.searchsorted(self._hashes, targets, side="left").tolist()
        his = np.searchsorted(self._hashes, targets, side="right").tolist()
        for encoded, lo, hi in zip(rest, los, his, strict=True):
            for candidate in self._hash_keys[lo:hi].tolist():
                row = self._row(candidate)
                if row is not None and self._bytes(row) == encoded:
                    found.append(int(candidate))
                    break
        return found

    def ids_of(self, keys: npt.NDArray[np.uint64] | Sequence[int]) -> list[str | None]:
        """The id of each key, None for a key that is not (or no longer) held."""
        wanted = np.asarray(keys, dtype=np.uint64)
        if not self._rows:
            return [None] * len(wanted)
        rows = np.searchsorted(self._keys[: self._rows], wanted)
        rows = np.minimum(rows, self._rows - 1)
        held = ((self._keys[rows] == wanted) & (self._lens[rows] >= 0)).tolist()
        starts, lens = self._starts[rows].tolist(), self._lens[rows].tolist()
        blob = self._blob
        return [
            blob[start : start + size].decode() if ok else None
            for ok, start, size in zip(held, starts, lens, strict=True)
        ]

    def keys(self) -> U64:
        """The live keys, ascending (a copy)."""
        return self._keys[: self._rows][self._lens[: self._rows] >= 0]

    def items(self) -> list[tuple[str, int]]:
        """(id, key) of every live row, in key order (for tests and tools: one str per row)."""
        rows = np.flatnonzero(self._lens[: self._rows] >= 0).tolist()
        return [(self._bytes(r).decode(), int(self._keys[r])) for r in rows]

    # ----- changes

    def add(self, ids: Sequence[str], keys: npt.NDArray[np.uint64] | Sequence[int]) -> None:
        """Append ids (not held now) under new keys, each above every key added before."""
        new_keys = np.asarray(keys, dtype=np.uint64)
        count = len(ids)
        if count == 0:
            return
        if len(new_keys) != count:
            raise ValueError(f"{count} ids for {len(new_keys)} keys")
        if self._rows and int(new_keys[0]) <= int(self._keys[self._rows - 1]):
            raise ValueError("keys must grow")
        if count > 1 and not np.all(new_keys[1:] > new_keys[:-1]):
            raise ValueError("keys must grow")
        encoded = [memory_id.encode() for memory_id in ids]
        lengths = np.fromiter(map(len, encoded), dtype=np.int32, count=count)
        self._reserve(self._rows + count)
        end = self._rows + count
        self._keys[self._rows : end] = new_keys
        offsets = np.cumsum(lengths, dtype=np.int64) - lengths + len(self._blob)
        self._starts[self._rows : end] = offsets
        self._lens[self._rows : end] = lengths
        self._blob += b"".join(encoded)
        self._rows = end
        self.live += count
        self._recent.update(zip(ids, new_keys.tolist(), strict=True))
        if len(self._recent) >= MERGE_AT:
            self._merge()

    def remove(self, keys: Iterable[int]) -> int:
        """Forget the rows of ``keys`` (keys not held are ignored); how many were removed."""
        removed = 0
        for key in keys:
            row = self._row(key)
            if row is None:
                continue
            memory_id = self._bytes(row).decode()
            if self._recent.get(memory_id) == key:
                del self._recent[memory_id]
            self._lens[row] = ~self._lens[row]
            removed += 1
        self.live -= removed
        if self._rows - self.live > max(self.live, _MIN_ROWS):
            self._compact()
        return removed

    # ----- persistence

    def to_bytes(self, namespace: str, next_key: int, removed: U64 | None = None) -> bytes:
        """The live rows as a file (see the module docstring)."""
        return b"".join(self._pieces(namespace, next_key, removed))

    def write(self, file: BinaryIO, namespace: str, next_key: int, removed: U64 | None = None) -> None:
        """``to_bytes`` into ``file``, without joining the pieces in memory first."""
        for piece in self._pieces(namespace, next_key, removed):
            file.write(piece)

    def live_rows(self) -> tuple[U64, npt.NDArray[np.uint32], bytes | memoryview]:
        """The live rows' keys (ascending), id lengths in bytes and ids' bytes end to end (a view
        of the map's own bytes when nothing was removed: not to be kept past the caller's use)."""
        alive = self._lens[: self._rows] >= 0
        keys = self._keys[: self._rows][alive]
        lens = self._lens[: self._rows][alive].astype(np.uint32)
        return keys, lens, self._live_blob(alive)

    def _pieces(self, namespace: str, next_key: int, removed: U64 | None) -> list[bytes | memoryview]:
        keys, lens, blob = self.live_rows()
        gone = np.zeros(0, dtype="<u8") if removed is None else np.asarray(removed, dtype="<u8")
        payload = [keys.astype("<u8").tobytes(), lens.astype("<u4").tobytes(), blob, gone.tobytes()]
        digest = sha256_of(payload)
        header = orjson.dumps(
            {
                "format": FORMAT,
                "namespace": namespace,
                "next_key": next_key,
                "count": len(keys),
                "blob_bytes": len(blob),
                "removed": len(gone),
                "sha256": digest,
            }
        )
        return [MAGIC + len(header).to_bytes(4, "little") + header, *payload]

    @classmethod
    def from_bytes(cls, data: bytes, namespace: str) -> tuple[IdMap, int, U64]:
        """``read`` from bytes."""
        return cls.read(io.BytesIO(data), namespace)

    @classmethod
    def read(cls, file: io.BufferedIOBase, namespace: str) -> tuple[IdMap, int, U64]:
        """The map a ``to_bytes`` file holds, its next key and the removed keys of sealed
        segments it records; ValueError when the file is not a whole, intact map of ``namespace``. Read into the arrays directly, hashed in slices: no
        copy of the whole file, no Python object per row alive at once."""
        if file.read(len(MAGIC)) != MAGIC:
            raise ValueError("not an id map of this format")
        header: dict[str, Any] = orjson.loads(file.read(int.from_bytes(file.read(4), "little")))
        if not isinstance(header, dict) or header.get("format") not in FORMATS_READ:
            raise ValueError("not an id map of this format")
        if header.get("namespace") != namespace:
            raise ValueError(f"the id map of namespace {header.get('namespace')!r}")
        count, blob_bytes, next_key = int(header["count"]), int(header["blob_bytes"]), int(header["next_key"])
        removed_count = int(header.get("removed", 0))  # format 2 records none
        if count < 0 or blob_bytes < 0 or removed_count < 0:
            raise ValueError("negative sizes")
        keys = np.zeros(count, dtype="<u8")
        lens = np.zeros(count, dtype="<u4")
        blob = bytearray(blob_bytes)
        removed = np.zeros(removed_count, dtype="<u8")
        digest = hashlib.sha256()
        for target in (keys.data.cast("B"), lens.data.cast("B"), memoryview(blob), removed.data.cast("B")):
            if file.readinto(target) != len(target):
                raise ValueError("id map of the wrong size (truncated?)")
            digest.update(target)
        if file.read(1) or digest.hexdigest() != header.get("sha256"):
            raise ValueError("id map checksum mismatch")
        if int(lens.sum(dtype=np.int64)) != blob_bytes or np.any(lens > np.iinfo(np.int32).max):
            raise ValueError("id lengths do not add up to the ids")
        if count and (np.any(keys[1:] <= keys[:-1]) or int(keys[-1]) >= next_key):
            raise ValueError("keys not ascending below next_key")
        idmap = cls()
        idmap._reserve(count)
        idmap._keys[:count] = keys
        idmap._lens[:count] = lens
        idmap._starts[:count] = np.cumsum(lens, dtype=np.int64) - idmap._lens[:count]
        idmap._blob = blob
        idmap._rows = idmap.live = count
        hashes = np.zeros(count, dtype=np.uint64)
        view = memoryview(blob)
        for lo in range(0, count, MERGE_AT):
            hi = min(count, lo + MERGE_AT)
            starts = idmap._starts[lo:hi].tolist()
            ends = (idmap._starts[lo:hi] + idmap._lens[lo:hi]).tolist()
            # Each id decoded: every one is UTF-8 (UnicodeDecodeError is a ValueError).
            parts = [view[s:e].tobytes() for s, e in zip(starts, ends, strict=True)]
            for part in parts:
                part.decode()
            hashes[lo : lo + len(parts)] = hash_ids(parts, len(parts))
        del view
        order = np.argsort(hashes, kind="stable")
        idmap._hashes, idmap._hash_keys = hashes[order], idmap._keys[:count][order]
        idmap._check_unique()
        return idmap, next_key, removed.astype(np.uint64)

    # ----- internals

    def _row(self, key: int) -> int | None:
        """The live row of ``key``, None when it is not held."""
        row = int(np.searchsorted(self._keys[: self._rows], np.uint64(key)))
        if row < self._rows and int(self._keys[row]) == key and self._lens[row] >= 0:
            return row
        return None

    def _bytes(self, row: int) -> bytes:
        start = int(self._starts[row])
        return bytes(self._blob[start : start + int(self._lens[row])])

    def _reserve(self, rows: int) -> None:
        capacity = len(self._keys)
        if rows <= capacity:
            return
        while capacity < rows:
            capacity *= 2
        for name in ("_keys", "_starts", "_lens"):
            old = getattr(self, name)
            grown = np.zeros(capacity, dtype=old.dtype)
            grown[: self._rows] = old[: self._rows]
            setattr(self, name, grown)

    def _merge(self) -> None:
        """Move ``_recent`` into the sorted hash arrays."""
        if not self._recent:
            return
        hashes = hash_ids((memory_id.encode() for memory_id in self._recent), len(self._recent))
        keys = np.fromiter(self._recent.values(), dtype=np.uint64, count=len(self._recent))
        order = np.argsort(hashes, kind="stable")
        hashes, keys = hashes[order], keys[order]
        at = np.searchsorted(self._hashes, hashes, side="right")
        self._hashes = np.insert(self._hashes, at, hashes)
        self._hash_keys = np.insert(self._hash_keys, at, keys)
        self._recent = {}

    def _live_blob(self, alive: npt.NDArray[np.bool_]) -> bytes | memoryview:
        """The live ids' bytes: a view of ``_blob`` when nothing was removed (not kept past
        the caller's use: a view forbids resizing the bytearray), else a filtered copy."""
        lens = self._lens[: self._rows]
        sizes = np.where(lens < 0, ~lens, lens).astype(np.int64)
        if bool(np.all(alive)):
            return memoryview(self._blob)
        keep = np.repeat(alive, sizes)
        return np.frombuffer(self._blob, dtype=np.uint8)[keep].tobytes()

    def _compact(self) -> None:
        """Drop removed rows from the rows, the blob and the hash arrays."""
        alive = self._lens[: self._rows] >= 0
        blob = self._live_blob(alive)
        keys = self._keys[: self._rows][alive]
        lens = self._lens[: self._rows][alive]
        # Hash entries of live keys only: a removed key, or an old key of an upserted id, goes.
        rows = np.searchsorted(self._keys[: self._rows], self._hash_keys)
        rows = np.minimum(rows, max(self._rows - 1, 0))
        keep = (self._keys[rows] == self._hash_keys) & alive[rows] if self._rows else rows < 0
        self._hashes, self._hash_keys = self._hashes[keep], self._hash_keys[keep]
        count = len(keys)
        capacity = max(_MIN_ROWS, 1 << max(count - 1, 0).bit_length())
        self._keys = np.zeros(capacity, dtype=np.uint64)
        self._starts = np.zeros(capacity, dtype=np.int64)
        self._lens = np.zeros(capacity, dtype=np.int32)
        self._keys[:count], self._lens[:count] = keys, lens
        self._starts[:count] = np.cumsum(lens, dtype=np.int64) - lens
        self._blob = bytearray(blob)
        self._rows = count

    def _check_unique(self) -> None:
        """ValueError when an id is held twice (only ids sharing a hash can be: compared)."""
        if len(self._hashes) < 2:
            return
        shared = self._hashes[1:] == self._hashes[:-1]
        if not shared.any():
            return
        starts = np.flatnonzero(shared & ~np.concatenate(([False], shared[:-1]))).tolist()
        for lo in starts:
            hi = lo + 1
            while hi < len(self._hashes) and self._hashes[hi] == self._hashes[lo]:
                hi += 1
            seen: set[bytes] = set()
            for key in self._hash_keys[lo:hi].tolist():
                row = self._row(key)
                encoded = b"" if row is None else self._bytes(row)
                if encoded in seen:
                    raise ValueError(f"id {encoded.decode()!r} held twice")
                seen.add(encoded)
