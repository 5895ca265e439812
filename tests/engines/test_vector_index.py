"""The vector index: exact search, the FAISS path above the size limit, removal and compaction."""

from __future__ import annotations

import threading

import numpy
import pytest

from mlharbor.engines import vector_index
from mlharbor.engines.vector_index import VectorIndex


def _unit(rng: numpy.random.Generator, n: int, dim: int = 16) -> numpy.ndarray:
    v = rng.standard_normal((n, dim)).astype(numpy.float32)
    return v / numpy.linalg.norm(v, axis=1, keepdims=True)


def test_exact_search_returns_neighbours_within_the_distance_nearest_first() -> None:
    rng = numpy.random.default_rng(1)
    vectors = _unit(rng, 500)
    index = VectorIndex(16)
    index.add(numpy.arange(10, 510), vectors)
    query = vectors[42] + 0.01
    matches = index.search(query, k=5, max_distance=10.0)
    expected = numpy.argsort(numpy.linalg.norm(vectors - query, axis=1))[:5] + 10
    assert [m.id for m in matches] == expected.tolist()
    assert matches[0].distance == pytest.approx(float(numpy.linalg.norm(vectors[42] - query)), abs=1e-4)
    assert [m.id for m in index.search(query, k=5, max_distance=0.5)] == [52]


def test_removed_vectors_are_never_returned_and_compaction_keeps_the_rest() -> None:
    rng = numpy.random.default_rng(2)
    vectors = _unit(rng, 400)
    index = VectorIndex(16)
    index.add(numpy.arange(400), vectors)
    assert index.remove(numpy.array([7, 7, 9999])) == 1
    assert index.remove(numpy.array([7])) == 0
    assert 7 not in [m.id for m in index.search(vectors[7], k=3, max_distance=10.0)]
    index.remove(numpy.arange(100, 300))  # half gone: compacts
    assert len(index) == 199
    assert [m.id for m in index.search(vectors[350], k=1, max_distance=0.1)] == [350]
    assert index.search(vectors[150], k=1, max_distance=0.1) == []
    with pytest.raises(ValueError):
        index.add(numpy.array([5]), vectors[:1])  # ids only grow


def test_large_collections_switch_to_the_ivf_index_and_still_find_each_vector() -> None:
    rng = numpy.random.default_rng(3)
    vectors = _unit(rng, 3000, dim=32)
    index = VectorIndex(32, exact_limit=1000, nprobe=16)
    index.add(numpy.arange(1500), vectors[:1500])
    assert index.wait_built(timeout=60)
    index.add(numpy.arange(1500, 3000), vectors[1500:])  # takes the built index into use, then adds
    assert index.approximate
    near = index.search(vectors[2000], k=10, max_distance=10.0)
    assert len({m.id for m in near}) == len(near) == 10  # every vector once, however it got in
    queries = vectors[::37] + 0.05 * _unit(rng, len(vectors[::37]), dim=32)
    found = [index.search(q, k=1, max_distance=1.0) for q in queries]
    hits = sum(bool(f) and f[0].id == i for f, i in zip(found, range(0, 3000, 37), strict=True))
    assert hits / len(queries) >= 0.95
    index.remove(numpy.arange(0, 3000, 37))
    assert all(not index.search(q, k=1, max_distance=0.3) for q in queries)
    index.remove(numpy.arange(0, 2600))  # small again: back to exact search
    assert not index.approximate
    assert len(index) == 400 - len(range(2627, 3000, 37))


def test_changes_made_while_the_index_builds_are_not_lost(monkeypatch) -> None:
    """The build runs in a thread on a copy; adds and removes made meanwhile are replayed on adoption."""
    release = threading.Event()
    build = vector_index._Build.run

    def held_back(self, *args):  # type: ignore[no-untyped-def]
        release.wait(30)
        build(self, *args)

    monkeypatch.setattr(vector_index._Build, "run", held_back)
    rng = numpy.random.default_rng(4)
    vectors = _unit(rng, 2000, dim=32)
    index = VectorIndex(32, exact_limit=1000, nprobe=64)
    index.add(numpy.arange(1200), vectors[:1200])
    index.add(numpy.arange(1200, 2000), vectors[1200:])  # during the build
    index.remove(numpy.array([5, 1500]))  # one from the copy, one added since
    assert not index.approximate
    assert [m.id for m in index.search(vectors[1700], k=1, max_distance=0.1)] == [1700]  # exact meanwhile
    release.set()
    assert index.wait_built(timeout=60) and index.approximate
    assert [m.id for m in index.search(vectors[1700], k=1, max_distance=0.1)] == [1700]
    assert [m.id for m in index.search(vectors[7], k=1, max_distance=0.1)] == [7]
    assert index.search(vectors[5], k=1, max_distance=0.1) == []
    assert index.search(vectors[1500], k=1, max_distance=0.1) == []
