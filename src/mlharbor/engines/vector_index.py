"""Nearest-neighbour search over face descriptors: exact with numpy, approximate with FAISS when large.

Ids are integers that only ever grow (the database's row sequence), so the id array stays sorted and an
id's row is a binary search away. Removal marks rows dead; the arrays are compacted once a quarter of
them are dead, so a DeleteFaces call never copies the whole matrix.

Up to ``exact_limit`` live vectors every search is exact: one matrix-vector product, ~1 ms per 100k
vectors on one core here. Above it an IVF-Flat index (FAISS) is built over the live vectors: a query
probes the nearest share of ~4·√n clusters, and the candidates' distances are computed exactly from
the stored vectors, so a returned distance is never approximate (re-ranking is built in); only a
neighbour in an unprobed cluster can be missed (recall@1 is measured by ``bench/faces.py``).

FAISS IVF-Flat was chosen by measurement (1M random unit vectors, 2 build threads, queries at distance
0.4 from a stored vector): build 22 s, 0.25 ms/query, recall@1 0.990 probing 32 of 4,000 clusters;
FAISS's HNSW (M 16, efConstruction 100, efSearch 64): build 155 s, 0.17 ms, recall@1 0.54; hnswlib
(same settings): build 159 s, 0.17 ms, recall@1 0.49; USearch was slowest to build already at 100k
(14 s vs IVF's 1.9 s). IVF also takes adds at the cost of one cluster assignment and removes for real
(HNSW libraries only mark deletions). It is rebuilt when the collection has grown fourfold since its
clusters were trained (~20-25 s at 1M faces on one core).

Not thread-safe: the owner serialises access (one lock per collection). The IVF index is built in a
background thread from a copy of the vectors; searches stay exact (or use the previous index) until
it is done, and the first call after it finishes takes it into use with the changes made meanwhile.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy

logger = logging.getLogger(__name__)

EXACT_LIMIT = 200_000
# Clusters probed per query: an eighth of them (at least 64). On concentrated, dlib-like synthetic data
# at 1M faces (4,000 clusters) recall@1 was 0.93 probing 64, 0.98 at 128, 0.993 at 256, 1.000 at 512
# (4.6 ms): the probe share, not the count, is what keeps recall as collections grow.
PROBED_SHARE = 8
MIN_PROBES = 64
_TRAIN_POINTS_PER_CLUSTER = 32  # FAISS warns below 39; 32 keeps 1M builds short and clusters sound
_REBUILD_GROWTH = 4
_FIRST_K = 32
_RETRY_GROWTH = 1.1


@dataclass(frozen=True, slots=True)
class Match:
    id: int
    distance: float  # Euclidean


class VectorIndex:
    def __init__(self, dim: int, *, exact_limit: int = EXACT_LIMIT, nprobe: int | None = None) -> None:
        self.dim = dim
        self.exact_limit = exact_limit
        self.nprobe = nprobe  # None: PROBED_SHARE of the clusters
        self._ids = numpy.empty(0, dtype=numpy.int64)
        self._vectors = numpy.empty((0, dim), dtype=numpy.float32)
        self._norms = numpy.empty(0, dtype=numpy.float32)  # squared, for ‖v−q‖² = ‖v‖² − 2v·q + ‖q‖²
        self._live = numpy.empty(0, dtype=bool)
        self._rows = 0  # used rows; the arrays have spare capacity past it
        self._count = 0  # live rows
        self._ivf = None  # faiss.IndexIVFFlat over the live vectors, ids = our ids
        self._ivf_trained_at = 0
        self._build: _Build | None = None  # an IVF index being built in the background
        self._failed_at = 0  # size at which the last build failed

    def __len__(self) -> int:
        return self._count

    @property
    def max_id(self) -> int:
        return int(self._ids[self._rows - 1]) if self._rows else -1

    @property
    def approximate(self) -> bool:
        self._adopt()
        return self._ivf is not None

    def wait_built(self, timeout: float) -> bool:
        """Wait for a background IVF build to finish (benchmarks and tests); True when none is running."""
        build = self._build
        return build is None or build.done.wait(timeout)

    def live(self) -> tuple[numpy.ndarray, numpy.ndarray]:
        """Copies of the ids and vectors held now, ids increasing."""
        live = self._live[: self._rows]
        return self._ids[: self._rows][live], self._vectors[: self._rows][live]

    def add(self, ids: numpy.ndarray, vectors: numpy.ndarray) -> None:
        """Append vectors whose ids are all greater than every id already here."""
        ids = numpy.asarray(ids, dtype=numpy.int64)
        vectors = numpy.ascontiguousarray(vectors, dtype=numpy.float32).reshape(len(ids), self.dim)
        if not len(ids):
            return
        if ids[0] <= self.max_id or numpy.any(numpy.diff(ids) <= 0):
            raise ValueError("ids must be added in increasing order")
        self._adopt()  # before appending: adoption replays rows newer than the build, and these go below
        self._reserve(self._rows + len(ids))
        end = self._rows + len(ids)
        self._ids[self._rows : end] = ids
        self._vectors[self._rows : end] = vectors
        self._norms[self._rows : end] = numpy.einsum("ij,ij->i", vectors, vectors)
        self._live[self._rows : end] = True
        self._rows, self._count = end, self._count + len(ids)
        if self._ivf is not None:
            self._ivf.add_with_ids(vectors, ids)
        if self._ivf is None or self._count >= _REBUILD_GROWTH * self._ivf_trained_at:
            self._maybe_build_ivf()

    def remove(self, ids: numpy.ndarray) -> int:
        """Forget these ids (unknown ones are ignored); returns how many were removed."""
        ids = numpy.asarray(ids, dtype=numpy.int64)
        rows = numpy.searchsorted(self._ids[: self._rows], ids)
        inside = rows < self._rows
        rows = rows[inside][self._ids[rows[inside]] == ids[inside]]
        rows = numpy.unique(rows)
        rows = rows[self._live[rows]]
        if not len(rows):
            return 0
        self._live[rows] = False
        self._count -= len(rows)
        self._adopt()
        if self._build is not None:
            self._build.removed.append(self._ids[rows].copy())
        if self._ivf is not None:
            self._ivf.remove_ids(_faiss().IDSelectorBatch(self._ids[rows]))
        if self._count < self.exact_limit // 2:
            self._ivf = self._build = None  # small again: exact is as fast and never misses
        if self._rows - self._count > self._rows // 4:
            self._compact()
        return len(rows)

    def search(self, query: numpy.ndarray, k: int, max_distance: float) -> list[Match]:
        """Up to ``k`` vectors within ``max_distance`` of the query, nearest first."""
        query = numpy.ascontiguousarray(query, dtype=numpy.float32).reshape(self.dim)
        if self._count == 0 or k <= 0:
            return []
        self._adopt()
        if self._ivf is not None:
            return self._search_ivf(query, k, max_distance)
        return self._search_exact(query, k, max_distance)

    # --- internals ---------------------------------------------------------------------------------
    def _search_exact(self, query: numpy.ndarray, k: int, max_distance: float) -> list[Match]:
        used = slice(0, self._rows)
        squared = self._norms[used] - 2.0 * (self._vectors[used] @ query) + float(query @ query)
        close = numpy.flatnonzero((squared <= max_distance * max_distance) & self._live[used])
        if len(close) > k:
            close = close[numpy.argpartition(squared[close], k - 1)[:k]]
        close = close[numpy.argsort(squared[close], kind="stable")]
        return [Match(int(self._ids[row]), float(numpy.sqrt(max(squared[row], 0.0)))) for row in close]

    def _search_ivf(self, query: numpy.ndarray, k: int, max_distance: float) -> list[Match]:
        assert self._ivf is not None
        self._ivf.nprobe = self.nprobe or max(MIN_PROBES, self._ivf.nlist // PROBED_SHARE)
        limit = max_distance * max_distance
        # FAISS's cost grows with k (a k-sized heap per query), and a search usually has a handful of
        # matches: ask for a few, and for all k only when even the last of those is a match.
        wanted = min(k, _FIRST_K, self._count)
        while True:
            squared, ids = self._ivf.search(query[None, :], wanted)
            if wanted >= min(k, self._count) or squared[0, -1] > limit or ids[0, -1] < 0:
                break
            wanted = min(k, self._count)
        return [
            Match(int(i), float(numpy.sqrt(max(d, 0.0))))
            for d, i in zip(squared[0], ids[0], strict=True)
            if i >= 0 and d <= limit
        ]

    def _maybe_build_ivf(self) -> None:
        """Start building an IVF index over a copy of the live vectors, in a thread: the build takes
        ~20 s at 1M vectors and the collection stays searchable (exactly, or with the old index)
        meanwhile. Changes made during the build are replayed when it is adopted."""
        if self._count <= self.exact_limit or self._build is not None:
            return
        if self._count < _RETRY_GROWTH * self._failed_at:
            return  # the last build failed (logged); try again once the collection has grown
        live = self._live[: self._rows]
        ids = self._ids[: self._rows][live]
        self._build = _Build(ids[-1] if len(ids) else -1, len(ids))
        threading.Thread(
            target=self._build.run,
            args=(self._vectors[: self._rows][live], ids, self.dim),
            name="ivf-build",
            daemon=True,
        ).start()

    def _adopt(self) -> None:
        """Take a finished background build into use, with the changes made while it ran."""
        build = self._build
        if build is None or not build.done.is_set():
            return
        self._build = None
        if build.index is None:
            self._failed_at = build.trained_at
            return
        if self._count <= self.exact_limit // 2:
            return
        if build.removed:
            build.index.remove_ids(_faiss().IDSelectorBatch(numpy.concatenate(build.removed)))
        newer = self._ids[: self._rows] > build.last_id
        newer &= self._live[: self._rows]
        if newer.any():
            build.index.add_with_ids(self._vectors[: self._rows][newer], self._ids[: self._rows][newer])
        self._ivf, self._ivf_trained_at = build.index, build.trained_at

    def _reserve(self, rows: int) -> None:
        if rows <= len(self._ids):
            return
        capacity = max(rows, 2 * len(self._ids), 1024)
        self._ids = _grown(self._ids, capacity)
        self._vectors = _grown(self._vectors, capacity)
        self._norms = _grown(self._norms, capacity)
        self._live = _grown(self._live, capacity)

    def _compact(self) -> None:
        live = self._live[: self._rows]
        self._ids = self._ids[: self._rows][live].copy()
        self._vectors = self._vectors[: self._rows][live].copy()
        self._norms = self._norms[: self._rows][live].copy()
        self._live = numpy.ones(self._count, dtype=bool)
        self._rows = self._count


class _Build:
    """One background IVF build: what it was built from, and the removals to replay on adoption."""

    def __init__(self, last_id: int, trained_at: int) -> None:
        self.last_id = last_id
        self.trained_at = trained_at
        self.removed: list[numpy.ndarray] = []
        self.index: Any = None
        self.done = threading.Event()

    def run(self, vectors: numpy.ndarray, ids: numpy.ndarray, dim: int) -> None:
        try:
            faiss = _faiss()
            clusters = int(4 * numpy.sqrt(len(vectors)))
            sample_size = min(len(vectors), _TRAIN_POINTS_PER_CLUSTER * clusters)
            rng = numpy.random.default_rng(0)
            sample = vectors[rng.choice(len(vectors), sample_size, replace=False)]
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, clusters, faiss.METRIC_L2)
            index.cp.min_points_per_centroid = 1  # quiet: the sample size is a deliberate choice
            index.train(sample)
            index.add_with_ids(vectors, ids)
            self.index = index
        except Exception:  # noqa: BLE001 - exact search keeps serving; the next change retries
            logger.exception("building the IVF index failed; searches stay exact")
        finally:
            self.done.set()


def _faiss() -> Any:
    """FAISS, limited to one thread: a build must not take every core from the requests being served,
    and one query is too small to split."""
    import faiss

    if faiss.omp_get_max_threads() != 1:
        faiss.omp_set_num_threads(1)
    return faiss


def _grown(array: numpy.ndarray, capacity: int) -> numpy.ndarray:
    grown = numpy.zeros((capacity, *array.shape[1:]), dtype=array.dtype)
    grown[: len(array)] = array
    return grown
