"""HnswIndex: upserts, removal, namespaces, dimensions, persistence across restarts, recall."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from gateway.memory import idmap
from gateway.memory.idmap import IdMap
from gateway.memory.index import HnswIndex
from gateway.memory.records import VectorIndex


def unit_vectors(rng: np.random.Generator, count: int, ndim: int) -> npt.NDArray[np.float32]:
    """Random directions (isotropic Gaussian, normalised): no structure for the graph to use."""
    vectors = rng.standard_normal((count, ndim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def items(prefix: str, vectors: npt.NDArray[np.float32]) -> list[tuple[str, Sequence[float]]]:
    return [(f"{prefix}{i}", tuple(v.tolist())) for i, v in enumerate(vectors)]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_is_a_vector_index(tmp_path: Path) -> None:
    index: VectorIndex = HnswIndex(tmp_path)
    assert len(index) == 0
    assert index.namespaces() == []


def test_add_search_remove(tmp_path: Path, rng: np.random.Generator) -> None:
    vectors = unit_vectors(rng, 50, 16)
    index = HnswIndex(tmp_path)
    index.add("facts", items("m", vectors))
    assert index.ndim == 16
    assert len(index) == 50
    assert index.size("facts") == 50

    hits = index.search("facts", vectors[7].tolist(), 5)
    assert hits[0][0] == "m7"
    assert hits[0][1] == pytest.approx(1.0, abs=1e-5)  # cosine similarity, not distance
    scores = [s for _, s in hits]
    assert scores == sorted(scores, reverse=True)
    assert len(hits) == 5
    # The score is the cosine similarity of the stored vector with the query.
    expected = float(vectors[7] @ vectors[int(hits[1][0][1:])])
    assert hits[1][1] == pytest.approx(expected, abs=1e-5)

    index.remove("facts", ["m7", "m8", "not-there"])
    assert len(index) == 48
    assert all(i not in ("m7", "m8") for i, _ in index.search("facts", vectors[7].tolist(), 50))
    assert index.search("facts", vectors[7].tolist(), 0) == []
    assert len(index.search("facts", vectors[0].tolist(), 100)) == 48  # k beyond the size: all
    index.remove("unknown", ["m1"])  # no such namespace: nothing to do


def test_add_replaces_the_vector_of_an_existing_id(tmp_path: Path, rng: np.random.Generator) -> None:
    a, b, c = unit_vectors(rng, 3, 8)
    index = HnswIndex(tmp_path)
    index.add("facts", [("x", a.tolist()), ("y", b.tolist())])
    index.add("facts", [("x", c.tolist())])
    assert len(index) == 2
    assert index.search("facts", c.tolist(), 1) == [("x", pytest.approx(1.0, abs=1e-5))]
    assert dict(index.search("facts", a.tolist(), 2))["x"] == pytest.approx(float(a @ c), abs=1e-5)
    # Repeated ids in one batch: the last vector wins.
    index.add("facts", [("y", a.tolist()), ("y", c.tolist())])
    assert len(index) == 2
    assert {i for i, s in index.search("facts", c.tolist(), 2) if s > 0.999} == {"x", "y"}


def test_bf16_storage_gives_close_similarities(tmp_path: Path, rng: np.random.Generator) -> None:
    vectors = unit_vectors(rng, 200, 64)
    index = HnswIndex(tmp_path, dtype="bf16")
    index.add("facts", items("m", vectors))
    for memory_id, score in index.search("facts", vectors[3].tolist(), 5):
        assert score == pytest.approx(float(vectors[3] @ vectors[int(memory_id[1:])]), abs=2e-3)
    index.save()
    assert HnswIndex(tmp_path, dtype="bf16").load()


def test_namespaces_are_isolated(tmp_path: Path, rng: np.random.Generator) -> None:
    vectors = unit_vectors(rng, 20, 8)
    index = HnswIndex(tmp_path)
    index.add("slack_data", items("s", vectors[:10]))
    index.add("gong_data", items("g", vectors[10:]))
    assert index.namespaces() == ["gong_data", "slack_data"]
    assert {i for i, _ in index.search("slack_data", vectors[12].tolist(), 20)} == {
        f"s{i}" for i in range(10)
    }
    assert index.search("gong_data", vectors[12].tolist(), 1)[0][0] == "g2"
    assert index.search("ai_web_research", vectors[0].tolist(), 5) == []
    # The same id in two namespaces is two memories.
    index.add("gong_data", [("s1", vectors[1].tolist())])
    index.remove("slack_data", ["s1"])
    assert index.search("gong_data", vectors[1].tolist(), 1)[0][0] == "s1"
    assert index.size("slack_data") == 9


def test_wrong_dimension_is_a_clear_error(tmp_path: Path, rng: np.random.Generator) -> None:
    index = HnswIndex(tmp_path)
    index.add("facts", items("m", unit_vectors(rng, 3, 8)))
    with pytest.raises(ValueError, match=r"memory 'bad': embedding has 5 dimensions, the index holds 8"):
        index.add("facts", [("ok", [0.1] * 8), ("bad", [0.1] * 5)])
    assert len(index) == 3  # nothing of the failed batch went in
    # All namespaces share the dimension: one query vector is searched across several.
    with pytest.raises(ValueError, match="5 dimensions"):
        index.add("other", [("m", [0.1] * 5)])
    with pytest.raises(ValueError, match="4 dimensions"):
        index.search("facts", [0.1] * 4, 3)
    with pytest.raises(ValueError, match="NaN or infinite"):
        index.add("facts", [("nan", [float("nan")] + [0.1] * 7)])
    with pytest.raises(ValueError, match="the index holds 8"):
        HnswIndex(tmp_path / "fixed", ndim=8).add("facts", [("m", [0.1] * 3)])


def test_index_survives_restart(tmp_path: Path, rng: np.random.Generator) -> None:
    vectors = unit_vectors(rng, 500, 32)
    queries = unit_vectors(rng, 20, 32)
    first = HnswIndex(tmp_path / "idx")
    first.add("slack_data", items("s", vectors[:300]))
    first.add("team/α β", items("t", vectors[300:]))  # not a safe file name as it stands
    first.remove("slack_data", ["s0"])
    first.save()
    before = {ns: [first.search(ns, q.tolist(), 10) for q in queries] for ns in first.namespaces()}

    restarted = HnswIndex(tmp_path / "idx")
    assert restarted.load()
    assert restarted.ndim == 32
    assert restarted.namespaces() == ["slack_data", "team/α β"]
    assert len(restarted) == 499
    after = {ns: [restarted.search(ns, q.tolist(), 10) for q in queries] for ns in restarted.namespaces()}
    assert after == before
    # It keeps working after the restart: upserts, removals, a new save.
    restarted.add("slack_data", [("s0", vectors[0].tolist()), ("s1", vectors[2].tolist())])
    restarted.remove("team/α β", ["t0"])
    assert restarted.search("slack_data", vectors[0].tolist(), 1)[0][0] == "s0"
    restarted.save()
    again = HnswIndex(tmp_path / "idx")
    assert again.load()
    assert len(again) == 499
    assert again.search("slack_data", vectors[2].tolist(), 2)[0][0] in ("s1", "s2")


def test_save_drops_files_of_forgotten_namespaces(tmp_path: Path, rng: np.random.Generator) -> None:
    index = HnswIndex(tmp_path)
    index.add("a", items("m", unit_vectors(rng, 5, 8)))
    index.add("b", items("m", unit_vectors(rng, 5, 8)))
    (tmp_path / "a.ids.json").write_text('{"format": 1}')  # an id map of the former format
    index.save()
    assert {p.name for p in tmp_path.iterdir()} == {
        "index.json",
        "a.usearch",
        "a.ids",
        "b.usearch",
        "b.ids",
    }
    index.clear()
    index.add("b", items("n", unit_vectors(rng, 2, 8)))
    index.save()
    assert {p.name for p in tmp_path.iterdir()} == {"index.json", "b.usearch", "b.ids"}
    reloaded = HnswIndex(tmp_path)
    assert reloaded.load()
    assert reloaded.namespaces() == ["b"]
    assert len(reloaded) == 2


def test_empty_index_round_trip(tmp_path: Path) -> None:
    HnswIndex(tmp_path).save()
    index = HnswIndex(tmp_path)
    assert index.load()
    assert len(index) == 0
    assert index.ndim is None


def saved_index(directory: Path, rng: np.random.Generator) -> HnswIndex:
    index = HnswIndex(directory)
    index.add("facts", items("m", unit_vectors(rng, 100, 16)))
    index.save()
    return index


def test_load_without_an_index_is_false(tmp_path: Path) -> None:
    assert not HnswIndex(tmp_path / "never-saved").load()


@pytest.mark.parametrize(
    "damage",
    [
        "truncated graph",
        "garbage graph",
        "missing graph",
        "missing id map",
        "truncated id map",
        "id map of another namespace",
        "a save of the former format",
        "id map of other keys",
        "graph of an older save",
        "corrupt manifest",
        "manifest not an object",
    ],
)
def test_load_of_a_damaged_index_is_false_and_changes_nothing(
    tmp_path: Path, rng: np.random.Generator, damage: str
) -> None:
    saved = saved_index(tmp_path, rng)
    graph, ids, manifest = tmp_path / "facts.usearch", tmp_path / "facts.ids", tmp_path / "index.json"
    if damage == "truncated graph":
        graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    elif damage == "garbage graph":
        graph.write_bytes(b"not a usearch file" * 100)
    elif damage == "missing graph":
        graph.unlink()
    elif damage == "missing id map":
        ids.unlink()
    elif damage == "truncated id map":
        ids.write_bytes(ids.read_bytes()[:-3])
    elif damage == "id map of another namespace":
        other = HnswIndex(tmp_path / "other")
        other.add("notes", items("m", unit_vectors(rng, 100, 16)))
        other.save()
        ids.write_bytes((tmp_path / "other" / "notes.ids").read_bytes())
    elif damage == "a save of the former format":  # JSON id maps: rebuilt from the store
        manifest.write_bytes(manifest.read_bytes().replace(b'"format":4', b'"format":1'))
    elif damage == "id map of other keys":
        other = HnswIndex(tmp_path / "other")  # the same ids under keys 100-199
        other.add("facts", items("m", unit_vectors(rng, 100, 16)))
        other.remove("facts", [f"m{i}" for i in range(100)])
        other.add("facts", items("m", unit_vectors(rng, 100, 16)))
        other.save()
        ids.write_bytes((tmp_path / "other" / "facts.ids").read_bytes())
    elif damage == "graph of an older save":  # a crash between the two renames of a save
        older = graph.read_bytes()
        saved.remove("facts", ["m1"])
        saved.add("facts", [("m2", [0.5] * 16)])
        saved.save()
        graph.write_bytes(older)
    elif damage == "corrupt manifest":
        manifest.write_bytes(b"{not json")
    else:
        manifest.write_bytes(b"[1, 2]")
    index = HnswIndex(tmp_path)
    index.add("live", [("x", [0.5] * 16)])
    assert not index.load()
    assert index.namespaces() == ["live"]  # the failed load left the index as it was


def test_load_of_a_mismatched_configuration_is_false(tmp_path: Path, rng: np.random.Generator) -> None:
    saved_index(tmp_path, rng)
    assert not HnswIndex(tmp_path, ndim=384).load()  # another embedding model
    assert not HnswIndex(tmp_path, dtype="bf16").load()
    assert HnswIndex(tmp_path, ndim=16).load()


async def test_bulk_adds_from_worker_threads_fill_each_namespace(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """The rebuild's path (``MemoryService.rebuild_index``): batches of 1,000 rows from the
    store, split by namespace, each added in a worker thread."""
    vectors = unit_vectors(rng, 2500, 8)
    index = HnswIndex(tmp_path)
    for start in range(0, len(vectors), 1000):
        batch = items("m", vectors[: start + 1000])[start:]
        for namespace, rows in (("a", batch[0::2]), ("b", batch[1::2])):  # even ids in a, odd in b
            await asyncio.to_thread(index.add, namespace, rows)
    assert (index.size("a"), index.size("b"), len(index)) == (1250, 1250, 2500)
    assert index.search("b", vectors[3].tolist(), 1)[0][0] == "m3"


def search_while_writing(
    index: HnswIndex, vectors: npt.NDArray[np.float32], kept: int, write: Callable[[], None]
) -> tuple[int, int]:
    """Run ``write`` in a thread while this one searches for memories m0..m{kept - 1} (never
    removed) by their own vectors; (searches, how many found themselves in their top 5)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            write()
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    writer = threading.Thread(target=run)
    writer.start()
    searches = found = 0
    while writer.is_alive() or searches < 50:
        i = searches % kept
        hits = index.search("facts", vectors[i].tolist(), 5)
        found += f"m{i}" in [memory_id for memory_id, _ in hits]
        searches += 1
    writer.join()
    assert not errors
    return searches, found


def test_searches_and_writes_from_several_threads(tmp_path: Path, rng: np.random.Generator) -> None:
    vectors = unit_vectors(rng, 3000, 16)
    index = HnswIndex(tmp_path)
    index.add("facts", items("m", vectors[:1000]))

    def write() -> None:
        for start in range(1000, 3000, 500):
            index.add("facts", items("m", vectors[: start + 500])[start:])
            index.remove("facts", [f"m{start}"])

    searches, found = search_while_writing(index, vectors, 1000, write)
    assert len(index) == 3000 - 4
    # Approximate search while the graph grows (HNSW): the vector itself is among its own top 5
    # almost always, but not always (a search racing an insert may take a poorer path; it missed
    # in 2 of 8 runs of the strict form of this check). Every search answered; nearly all found it.
    assert found >= 0.95 * searches, f"{found} of {searches}"


def test_recall_at_10_against_brute_force(tmp_path: Path) -> None:
    """The issue's target: recall@10 >= 0.95 on 10,000 random vectors.

    Isotropic random vectors are the hardest data for a graph index (the 10th neighbour is barely
    nearer than the 1,000th), so this asks for ``expansion_search`` 384 (recall ~0.975): at the
    default 128 the same data scores ~0.83, while embedding-like vectors score 0.96 at 100,000
    (benchmarks/memory_index.py).
    """
    rng = np.random.default_rng(42)
    vectors = unit_vectors(rng, 10_000, 128)
    queries = unit_vectors(rng, 200, 128)
    index = HnswIndex(tmp_path, expansion_search=384)
    for start in range(0, len(vectors), 1000):
        index.add("facts", [(str(i), v.tolist()) for i, v in enumerate(vectors[start : start + 1000], start)])
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    found = 0
    for query, truth in zip(queries, exact, strict=True):
        found += len({int(i) for i, _ in index.search("facts", query.tolist(), 10)} & set(truth.tolist()))
    recall = found / exact.size
    assert recall >= 0.95, f"recall@10 {recall:.3f}"


# ----- the id map (gateway/memory/idmap.py): no Python object per memory


@pytest.fixture
def colliding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every id hashes to the same value: only the comparison of stored ids tells them apart."""
    monkeypatch.setattr(idmap, "hash_id", lambda data: 42)


def test_id_map_adds_finds_and_removes_across_merges() -> None:
    ids = IdMap()
    count = idmap.MERGE_AT * 2 + 100  # two merges into the sorted arrays, then recent additions
    names = [f"ing_{i:x}_é{i}" for i in range(count)]  # non-ASCII: lengths are bytes, not chars
    for start in range(0, count, 300):
        chunk = names[start : start + 300]
        ids.add(chunk, np.arange(start, start + len(chunk), dtype=np.uint64))
    assert len(ids) == count
    assert [ids.key_of(n) for n in (names[0], names[5000], names[-1])] == [0, 5000, count - 1]
    assert ids.key_of("ing_missing") is None
    assert ids.ids_of([3, count - 1, count, 10**12]) == [names[3], names[-1], None, None]
    assert ids.remove([3, 3, 10**12]) == 1
    assert ids.key_of(names[3]) is None and ids.ids_of([3]) == [None]
    assert len(ids) == count - 1
    with pytest.raises(ValueError, match="keys must grow"):
        ids.add(["late"], [5])


def test_id_map_resolves_ids_that_share_a_hash(colliding: None) -> None:
    ids = IdMap()
    names = [f"m{i}" for i in range(idmap.MERGE_AT + 10)]  # most merged, the last 10 recent
    ids.add(names, np.arange(len(names), dtype=np.uint64))
    assert all(ids.key_of(n) == i for i, n in enumerate(names) if i % 97 == 0)
    assert ids.key_of("m-not-there") is None
    ids.remove([ids.key_of("m1") or 0])
    assert ids.key_of("m1") is None and ids.key_of("m2") == 2
    # A round trip recomputes the hashes (all equal here) and still tells the ids apart.
    again, _, _ = IdMap.from_bytes(ids.to_bytes("ns", len(names)), "ns")
    assert again.key_of("m2") == 2 and again.key_of("m1") is None and again.key_of("m4100") == 4100


def test_index_with_colliding_hashes_upserts_and_searches(
    tmp_path: Path, rng: np.random.Generator, colliding: None
) -> None:
    vectors = unit_vectors(rng, 40, 8)
    index = HnswIndex(tmp_path)
    index.add("facts", items("m", vectors[:20]))
    index.add("facts", [("m3", vectors[30].tolist())])  # upsert: m3 is found by comparing ids
    assert len(index) == 20
    assert index.search("facts", vectors[30].tolist(), 1)[0][0] == "m3"
    assert index.search("facts", vectors[4].tolist(), 1)[0][0] == "m4"
    index.remove("facts", ["m4"])
    assert "m4" not in [i for i, _ in index.search("facts", vectors[4].tolist(), 20)]
    index.save()
    reloaded = HnswIndex(tmp_path)
    assert reloaded.load()
    assert reloaded.size("facts") == 19
    assert reloaded.search("facts", vectors[30].tolist(), 1)[0][0] == "m3"


def test_id_map_compacts_removed_rows(rng: np.random.Generator) -> None:
    ids = IdMap()
    names = [f"id-{i}" for i in range(10_000)]
    ids.add(names, np.arange(10_000, dtype=np.uint64))
    blob_before = len(ids._blob)
    ids.remove(range(0, 5_000))  # half: not yet more removed than live
    assert ids._rows == 10_000
    ids.remove([5_000])  # now removed rows outnumber live ones: compacted
    assert (ids._rows, len(ids)) == (4_999, 4_999)
    assert len(ids._blob) < blob_before * 0.51
    assert len(ids._hashes) == 4_999  # hash entries of removed rows are gone too
    assert ids.key_of("id-5001") == 5001 and ids.key_of("id-10") is None
    assert ids.ids_of([5001, 9999, 100]) == ["id-5001", "id-9999", None]
    ids.add(["id-10"], [10_000])  # keys keep growing after a compaction
    assert ids.key_of("id-10") == 10_000
    assert ids.items()[:2] == [("id-5001", 5001), ("id-5002", 5002)]


def test_many_upserts_of_one_id_keep_one_entry(tmp_path: Path, rng: np.random.Generator) -> None:
    vectors = unit_vectors(rng, 3, 8)
    index = HnswIndex(tmp_path)
    index.add("facts", items("other", vectors[:2]))
    for round_ in range(5_000):
        index.add("facts", [("same", vectors[2 if round_ % 2 else 0].tolist())])
    assert index.size("facts") == 3
    graph_ids = index._graphs["facts"].ids
    assert graph_ids._rows <= 2 * 3 + 64  # compacted as it goes, not one row per upsert
    assert len(graph_ids._hashes) + len(graph_ids._recent) <= 2 * 3 + 64 + idmap.MERGE_AT
    assert index.search("facts", vectors[2].tolist(), 1) == [("same", pytest.approx(1.0, abs=1e-5))]
    index.save()
    reloaded = HnswIndex(tmp_path)
    assert reloaded.load()
    assert sorted(reloaded._graphs["facts"].ids.items()) == [("other0", 0), ("other1", 1), ("same", 5_001)]


def test_id_map_round_trip_and_damage() -> None:
    ids = IdMap()
    ids.add(["a", "β", "c"], [0, 1, 7])
    ids.remove([1])
    data = ids.to_bytes("facts", 8)
    again, next_key, _ = IdMap.from_bytes(data, "facts")
    assert next_key == 8 and again.items() == [("a", 0), ("c", 7)]
    with pytest.raises(ValueError, match="namespace"):
        IdMap.from_bytes(data, "other")
    with pytest.raises(ValueError, match="wrong size"):
        IdMap.from_bytes(data[:-1], "facts")
    with pytest.raises(ValueError, match="checksum"):
        IdMap.from_bytes(data[:-1] + b"x", "facts")
    with pytest.raises(ValueError, match="format"):
        IdMap.from_bytes(b'{"format":1}', "facts")
    # A duplicated id, with a valid checksum, is refused: built by hand as a writer could not.
    twice = IdMap()
    twice.add(["a"], [0])
    twice._recent.clear()
    twice.add(["a"], [1])
    with pytest.raises(ValueError, match="held twice"):
        IdMap.from_bytes(twice.to_bytes("facts", 2), "facts")


def test_searches_go_on_while_a_save_writes_and_changes_wait_for_it(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    index = HnswIndex(tmp_path / "idx")
    vectors = unit_vectors(rng, 2000, 16)  # searched exactly: no approximate miss
    index.add("ns", items("m", vectors))
    graph = index._graphs["ns"]
    real_save = graph.index.save
    writing, release = threading.Event(), threading.Event()

    def slow_save(path: object, **options: object) -> None:  # held open until the test lets it go
        writing.set()
        assert release.wait(10)
        real_save(path, **options)

    graph.index.save = slow_save  # type: ignore[method-assign]
    saver = threading.Thread(target=index.save)
    saver.start()
    assert writing.wait(10)
    # The save is in the middle of writing: a search neither waits for it nor sees a change.
    found = index.search("ns", vectors[7].tolist(), 1)
    assert found[0][0] == "m7"
    adder = threading.Thread(target=index.add, args=("ns", items("late", unit_vectors(rng, 1, 16))))
    adder.start()
    adder.join(0.3)
    assert adder.is_alive() and index.size("ns") == 2000  # the add waits for the save
    release.set()
    saver.join(10)
    adder.join(10)
    assert index.size("ns") == 2001
    reloaded = HnswIndex(tmp_path / "idx")
    assert reloaded.load() and reloaded.size("ns") == 2000  # the file holds what the save began with


def test_saves_and_searches_from_threads_at_once_stay_right(tmp_path: Path, rng: np.random.Generator) -> None:
    index = HnswIndex(tmp_path / "idx")
    vectors = unit_vectors(rng, 2000, 16)
    index.add("ns", items("m", vectors))
    extra = unit_vectors(rng, 5, 16)
    errors: list[BaseException] = []
    stop = threading.Event()

    def search() -> None:
        draw = random.Random(threading.get_ident())
        try:
            while not stop.is_set():
                i = draw.randrange(2000)
                assert index.search("ns", vectors[i].tolist(), 1)[0][0] == f"m{i}"
        except BaseException as exc:  # reported below
            errors.append(exc)

    def save() -> None:
        try:
            for n in range(5):
                index.add("ns", items(f"s{n}-", extra[n : n + 1]))  # a change to save
                index.save()
        except BaseException as exc:
            errors.append(exc)

    searchers = [threading.Thread(target=search) for _ in range(3)]
    for t in searchers:
        t.start()
    save()
    stop.set()
    for t in searchers:
        t.join(10)
    assert errors == []
    reloaded = HnswIndex(tmp_path / "idx")
    assert reloaded.load() and reloaded.size("ns") == 2005


def test_a_save_lets_other_threads_run_while_usearch_writes(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # usearch holds the GIL for a whole save; its progress callback is where the index yields.
    import gateway.memory.index as index_module

    yields: list[float] = []
    real_sleep = index_module.time.sleep

    def counting_sleep(seconds: float) -> None:
        yields.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(index_module.time, "sleep", counting_sleep)
    index = HnswIndex(tmp_path / "idx")
    index.add("ns", items("m", unit_vectors(rng, 10_000, 8)))
    index.save()
    assert yields.count(0) >= 4  # two calls a node: every 4,096th yields
    reloaded = HnswIndex(tmp_path / "idx")
    assert reloaded.load() and reloaded.size("ns") == 10_000


# ----- sealed segments: a namespace's older vectors in memory-mapped files


def brute_force(
    vectors: dict[str, npt.NDArray[np.float32]], query: npt.NDArray[np.float32], k: int
) -> list[str]:
    ranked = sorted(vectors, key=lambda i: -float(vectors[i] @ query))
    return ranked[:k]


def test_sealed_segments_answer_as_one_graph_through_upserts_and_removals(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    index = HnswIndex(tmp_path, seal_vectors=64)
    vectors = unit_vectors(rng, 300, 16)
    live = {f"m{i}": v for i, v in enumerate(vectors)}
    for start in range(0, 300, 50):
        index.add("facts", items("m", vectors)[start : start + 50])
    # 300 vectors, checked every 16 added: the first segment sealed once 64 have grown, the later
    # ones once 32 have (half the size: the growing segment's peak halves for a large namespace).
    sealed = sorted(int(p.name.split(".")[1]) for p in tmp_path.glob("facts.*.seg"))
    lo = index._graphs["facts"].mutable_lo
    sizes = [b - a for a, b in itertools.pairwise([*sealed, lo])]
    assert sealed[0] == 0 and 64 <= sizes[0] < 80 and len(sizes) == 8
    assert all(32 <= size < 48 for size in sizes[1:]) and 0 < 300 - lo < 32
    assert len(index) == index.size("facts") == 300
    # Replaced and removed memories of sealed segments never come back from a search.
    replaced = unit_vectors(rng, 3, 16)
    index.add("facts", [(f"m{i}", replaced[j].tolist()) for j, i in enumerate((3, 70, 299))])
    live.update({f"m{i}": replaced[j] for j, i in enumerate((3, 70, 299))})
    index.remove("facts", ["m5", "m130", "m131", "m298"])
    for gone in ("m5", "m130", "m131", "m298"):
        del live[gone]
    assert len(index) == 296
    dead = [i for i in (3, 70, 299, 5, 130, 131, 298) if i < lo]  # keys = positions; the rest grew
    assert index.segments()[1] == len(dead) >= 5
    for query in [*unit_vectors(rng, 20, 16), vectors[5], vectors[3], replaced[1]]:
        hits = index.search("facts", query.tolist(), 10)  # each segment is small: searched exactly
        assert [i for i, _ in hits] == brute_force(live, query, 10)
        assert [s for _, s in hits] == pytest.approx([float(live[i] @ query) for i, _ in hits], abs=1e-5)
    assert len(index.search("facts", vectors[0].tolist(), 1000)) == 296  # k beyond the size: all live


def test_sealed_segments_survive_restart_and_files_follow_the_namespaces(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    index = HnswIndex(tmp_path, seal_vectors=64)
    vectors = unit_vectors(rng, 200, 16)
    index.add("facts", items("m", vectors))
    index.add("notes", items("n", vectors[:10]))
    index.remove("facts", ["m1", "m100"])
    index.save()
    queries = unit_vectors(rng, 10, 16)
    before = [index.search("facts", q.tolist(), 10) for q in queries]

    restarted = HnswIndex(tmp_path, seal_vectors=64)
    assert restarted.load()
    assert len(restarted) == 208
    assert [restarted.search("facts", q.tolist(), 10) for q in queries] == before
    assert all(i not in ("m1", "m100") for i, _ in restarted.search("facts", vectors[1].tolist(), 200))
    # A removal after the restart is counted against the loaded segment, and kept by a save.
    restarted.remove("facts", ["m2"])
    restarted.save()
    again = HnswIndex(tmp_path, seal_vectors=64)
    assert again.load()
    assert "m2" not in [i for i, _ in again.search("facts", vectors[2].tolist(), 5)]
    # A cleared namespace's sealed files go at the next save; the other's stay.
    again.clear()
    again.add("notes", items("n", vectors[:10]))
    again.save()
    assert {p.name for p in tmp_path.iterdir()} == {"index.json", "notes.usearch", "notes.ids"}


def test_a_save_of_the_one_graph_format_loads_and_seals_as_it_grows(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    vectors = unit_vectors(rng, 300, 16)
    HnswIndex(tmp_path).add("facts", items("m", vectors[:200]))
    old = HnswIndex(tmp_path)
    old.add("facts", items("m", vectors[:200]))
    old.save()
    manifest = tmp_path / "index.json"
    manifest.write_bytes(
        manifest.read_bytes().replace(b'"format":4', b'"format":2').replace(b',"segments":{}', b"")
    )
    assert b"segments" not in manifest.read_bytes()
    index = HnswIndex(tmp_path, seal_vectors=64)
    assert index.load()
    index.add("facts", items("m", vectors)[200:])  # the 200 loaded are sealed with the first add
    # The first seal holds the 200 loaded and the first chunk added; the later ones 32 each.
    assert sorted(int(p.name.split(".")[1]) for p in tmp_path.glob("*.seg")) == [0, 216, 248]
    assert len(index) == 300
    assert index.search("facts", vectors[250].tolist(), 1)[0][0] == "m250"
    assert index.search("facts", vectors[20].tolist(), 1)[0][0] == "m20"


@pytest.mark.parametrize(
    "damage",
    [
        "missing segment",
        "segment of other keys",
        "segments out of order",
        "missing ids",
        "ids of another segment",
        "truncated ids",
        "flipped byte in ids",
        "removed key of no segment",
        "removed key its segment does not hold",
        "format 3 with segments",
    ],
)
def test_load_with_a_damaged_segment_is_false(tmp_path: Path, rng: np.random.Generator, damage: str) -> None:
    index = HnswIndex(tmp_path, seal_vectors=64)
    vectors = items("m", unit_vectors(rng, 200, 16))
    index.add("facts", vectors[:10])
    index.remove("facts", ["m1"])  # before its segment is sealed
    index.add("facts", vectors[10:])
    index.remove("facts", ["m3"])  # after: recorded in the map's removed keys
    index.save()
    first, second, *_ = sorted(tmp_path.glob("facts.*.seg"), key=lambda p: int(p.name.split(".")[1]))
    lo = int(second.name.split(".")[1])
    manifest, sids = tmp_path / "index.json", second.with_suffix(".sids")
    assert HnswIndex(tmp_path, seal_vectors=64).load()  # as saved
    if damage == "missing segment":
        second.unlink()
    elif damage == "segment of other keys":
        second.write_bytes(first.read_bytes())
    elif damage == "segments out of order":
        listing = f'"facts.0.seg",0,{lo}'.encode()
        assert listing in manifest.read_bytes()
        manifest.write_bytes(manifest.read_bytes().replace(listing, f'"facts.0.seg",1,{lo}'.encode()))
    elif damage == "missing ids":
        sids.unlink()
    elif damage == "ids of another segment":
        sids.write_bytes(first.with_suffix(".sids").read_bytes())
    elif damage == "truncated ids":
        sids.write_bytes(sids.read_bytes()[:-1])
    elif damage == "flipped byte in ids":
        data = bytearray(sids.read_bytes())
        data[-3] ^= 1
        sids.write_bytes(bytes(data))
    elif damage in ("removed key of no segment", "removed key its segment does not hold"):
        with open(tmp_path / "facts.ids", "rb") as f:
            rows, next_key, removed = IdMap.read(f, "facts")
        assert removed.tolist() == [3]
        # Key 1 was removed while its segment still grew: its sealed file never held it.
        wrong = 10**6 if damage == "removed key of no segment" else 1
        (tmp_path / "facts.ids").write_bytes(
            rows.to_bytes("facts", next_key, np.array([wrong], dtype=np.uint64))
        )
    else:  # sealed segments whose ids were kept in the namespace's map: rebuilt from the store
        manifest.write_bytes(manifest.read_bytes().replace(b'"format":4', b'"format":3'))
    assert not HnswIndex(tmp_path, seal_vectors=64).load()


def test_a_worker_that_does_not_own_the_files_seals_into_its_own_directory(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    dead = tmp_path / ".private-999999999"  # a worker killed before its close(): no such process
    dead.mkdir(parents=True)
    (dead / "facts.0.seg").write_bytes(b"x")
    index = HnswIndex(tmp_path, seal_vectors=64)
    index.keep_segments_private()
    assert not dead.exists()
    vectors = unit_vectors(rng, 150, 16)
    index.add("facts", items("m", vectors))
    private = tmp_path / f".private-{os.getpid()}"
    assert sorted(p.name for p in private.iterdir()) == [
        "facts.0.seg",
        "facts.0.sids",
        "facts.64.seg",
        "facts.64.sids",
        "facts.96.seg",
        "facts.96.sids",
    ]
    index.save()  # the owner's files are not this worker's to write
    assert [p.name for p in tmp_path.iterdir()] == [private.name]
    assert index.search("facts", vectors[10].tolist(), 1)[0][0] == "m10"
    index.close()
    assert not private.exists()
    assert index.search("facts", vectors[10].tolist(), 1)[0][0] == "m10"  # still mapped


def test_searches_go_on_while_segments_are_sealed(tmp_path: Path, rng: np.random.Generator) -> None:
    vectors = unit_vectors(rng, 3000, 16)
    index = HnswIndex(tmp_path, seal_vectors=256)
    index.add("facts", items("m", vectors[:1000]))

    def write() -> None:
        for start in range(1000, 3000, 100):
            index.add("facts", items("m", vectors[: start + 100])[start:])
            index.remove("facts", [f"m{start - 400}"])  # in a sealed segment by now
            index.save()

    searches, found = search_while_writing(index, vectors, 600, write)
    assert len(index) == 3000 - 20
    # One segment of 256, then of 128: (3,000 - 256) / 128 ~ 21 more, less the chunks' slack.
    assert 19 <= len(list(tmp_path.glob("*.seg"))) <= 22
    assert found >= 0.95 * searches, f"{found} of {searches}"
    reloaded = HnswIndex(tmp_path, seal_vectors=256)
    assert reloaded.load() and len(reloaded) == 3000 - 20


def test_sealed_segments_keep_their_ids_in_files_written_once(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    index = HnswIndex(tmp_path, seal_vectors=64)
    vectors = unit_vectors(rng, 300, 16)
    index.add("facts", items("m", vectors))
    graph = index._graphs["facts"]
    # The map in memory holds the growing segment's rows only; the eight sealed segments' are in
    # their files, and every id is still found, by key (search) and by id (upsert, removal).
    assert len(graph.ids) == 300 - graph.mutable_lo < 48 and len(graph.sealed) == 8
    assert sorted(p.name for p in tmp_path.glob("facts.*.sids")) == sorted(
        s.file.replace(".seg", ".sids") for s in graph.sealed
    )
    assert [i for s in graph.sealed for i, _ in s.ids.items()] == [f"m{i}" for i in range(graph.mutable_lo)]
    assert all(index.search("facts", vectors[i].tolist(), 1)[0][0] == f"m{i}" for i in (0, 63, 64, 200, 299))
    index.save()
    written = {p.name: p.read_bytes() for p in tmp_path.glob("*.s*")}
    index.remove("facts", ["m10", "m150"])
    index.add("facts", [("m20", vectors[21].tolist())])  # upsert of a sealed memory
    assert len(index) == 298
    index.save()
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.s*")} == written  # never rewritten
    reloaded = HnswIndex(tmp_path, seal_vectors=64)
    assert reloaded.load() and len(reloaded) == 298 and reloaded.segments() == (8, 3)
    found = [i for i, _ in reloaded.search("facts", vectors[10].tolist(), 300)]
    assert "m10" not in found and "m150" not in found and found.count("m20") == 1
    assert reloaded.search("facts", vectors[21].tolist(), 2)[1][0] in ("m20", "m21")


def test_sealed_ids_that_share_a_hash_are_told_apart(
    tmp_path: Path, rng: np.random.Generator, colliding: None
) -> None:
    index = HnswIndex(tmp_path, seal_vectors=64)
    vectors = unit_vectors(rng, 200, 16)
    index.add("facts", items("m", vectors))
    index.add("facts", [("m5", vectors[199].tolist()), ("m70", vectors[198].tolist())])  # in sealed ones
    index.remove("facts", ["m6", "m71"])
    assert len(index) == 198
    index.save()
    reloaded = HnswIndex(tmp_path, seal_vectors=64)
    assert reloaded.load() and len(reloaded) == 198
    hits = [i for i, _ in reloaded.search("facts", vectors[199].tolist(), 200)]
    assert hits.count("m5") == 1 and "m6" not in hits and "m71" not in hits
    reloaded.remove("facts", ["m7"])
    assert reloaded.size("facts") == 197
