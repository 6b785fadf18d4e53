"""An in-memory nearest-neighbour index of cached prompts, per category and scope.

Each replica keeps its own (see ARCHITECTURE.md): vectors of the prompts it stored, L2-normalised,
searched by one matrix product. The entries themselves live in the store, so a neighbour whose
entry has expired or been evicted is dropped when found missing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]


class SemanticIndex:
    """Prompts of one category: (scope, vector) -> entry key, oldest dropped past ``max_entries``."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._scopes: dict[str, OrderedDict[str, Vector]] = {}
        self._count = 0

    @staticmethod
    def normalise(values: Sequence[float]) -> Vector | None:
        vector = np.asarray(values, dtype=np.float32)
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0 else None

    def add(self, scope: str, key: str, vector: Vector) -> None:
        entries = self._scopes.setdefault(scope, OrderedDict())
        if key not in entries:
            self._count += 1
        entries[key] = vector
        entries.move_to_end(key)
        while self._count > self._max:
            self._drop_oldest()

    def nearest(self, scope: str, vector: Vector, threshold: float) -> str | None:
        """The key of the most similar prompt with cosine >= ``threshold``, if any."""
        entries = self._scopes.get(scope)
        if not entries:
            return None
        keys = list(entries)
        matrix = np.stack([entries[k] for k in keys])
        if matrix.shape[1] != vector.shape[0]:
            return None  # another embedding model's vectors: never comparable
        similarities = matrix @ vector
        best = int(np.argmax(similarities))
        return keys[best] if float(similarities[best]) >= threshold else None

    def discard(self, scope: str, key: str) -> None:
        entries = self._scopes.get(scope)
        if entries is not None and entries.pop(key, None) is not None:
            self._count -= 1

    def clear(self) -> int:
        """Forget every prompt (the entries stay in the store); returns how many were held."""
        count, self._count = self._count, 0
        self._scopes = {}
        return count

    def __len__(self) -> int:
        return self._count

    def _drop_oldest(self) -> None:
        # Scopes are few; drop from the largest, which holds the oldest entries of the busiest use.
        scope = max(self._scopes, key=lambda s: len(self._scopes[s]))
        self._scopes[scope].popitem(last=False)
        self._count -= 1
        if not self._scopes[scope]:
            del self._scopes[scope]
