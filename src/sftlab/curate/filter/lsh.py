"""MinHash LSH band tables small enough for a million records: sorted numpy arrays plus a dict of recent entries.

The bands are datasketch's (`_optimal_param` for the threshold and weights). datasketch's in-memory `MinHashLSH`
keeps a 100-byte band key and a one-element set per band per record (4.7 KB a record, measured: the largest
part of the filter's memory at 1M records); here each band holds a sorted uint64 array of band hashes with the
int64 record keys beside (16 bytes per band per record, 224 B at 14 bands) plus a dict of the entries added
since the last merge. A hash collision only adds a candidate, and every candidate is verified by the caller, so
the answers are those of exact band matching.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from datasketch.lsh import _optimal_param

_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd: each round (h ^ v) * _MIX is a bijection of h
MERGE_EVERY = 50000  # recent records kept in dicts before they are merged into the sorted arrays


class BandTables:
    def __init__(self, threshold: float, num_perm: int, weights: tuple[float, float]) -> None:
        self.bands, self.rows = _optimal_param(threshold, num_perm, *weights)
        self.hashes = [np.empty(0, np.uint64) for _ in range(self.bands)]
        self.keys = [np.empty(0, np.int64) for _ in range(self.bands)]
        self.recent: list[dict[int, Any]] = [{} for _ in range(self.bands)]
        self.recent_count = 0

    def band_hashes(self, hashvalues: np.ndarray) -> np.ndarray:
        """(records, num_perm) MinHash values -> (records, bands) uint64 band hashes."""
        v = hashvalues[:, : self.bands * self.rows].reshape(len(hashvalues), self.bands, self.rows)
        h = np.zeros((len(hashvalues), self.bands), np.uint64)
        with np.errstate(over="ignore"):
            for j in range(self.rows):
                h = (h ^ v[:, :, j]) * _MIX
        return h

    def merged_candidates(self, band_hashes: np.ndarray) -> list[set[int] | None]:
        """Per row, the merged (older) records sharing a band hash: one vectorised search per band."""
        found: list[set[int] | None] = [None] * len(band_hashes)
        for b in range(self.bands):
            if not len(self.hashes[b]):
                continue
            lo = np.searchsorted(self.hashes[b], band_hashes[:, b], "left")
            hi = np.searchsorted(self.hashes[b], band_hashes[:, b], "right")
            for i in np.nonzero(hi > lo)[0].tolist():
                found[i] = (found[i] or set()).union(self.keys[b][lo[i]:hi[i]].tolist())
        return found

    def recent_candidates(self, row: Sequence[int], found: set[int] | None) -> set[int]:
        """`found` plus the recent (not yet merged) records sharing a band hash of `row`."""
        out = set(found) if found else set()
        for table, h in zip(self.recent, row, strict=True):
            held = table.get(h)
            if isinstance(held, list):
                out.update(held)
            elif held is not None:
                out.add(held)
        return out

    def insert(self, key: int, row: Sequence[int]) -> None:
        """Add a record (its band hashes as Python ints) to the recent tables; call `merge` between batches."""
        for table, h in zip(self.recent, row, strict=True):
            held = table.setdefault(h, key)
            if held is not key:
                if isinstance(held, list):
                    held.append(key)
                else:
                    table[h] = [held, key]
        self.recent_count += 1

    def merge(self) -> None:
        """Move the recent entries into the sorted arrays (linear: a sorted insert, not a re-sort)."""
        if not self.recent_count:
            return
        for b, table in enumerate(self.recent):
            pairs = [(h, k) for h, held in table.items() for k in (held if isinstance(held, list) else [held])]
            new_h = np.fromiter((h for h, _ in pairs), np.uint64, len(pairs))
            new_k = np.fromiter((k for _, k in pairs), np.int64, len(pairs))
            order = np.argsort(new_h, kind="stable")
            pos = np.searchsorted(self.hashes[b], new_h[order])
            self.hashes[b] = np.insert(self.hashes[b], pos, new_h[order])
            self.keys[b] = np.insert(self.keys[b], pos, new_k[order])
            table.clear()
        self.recent_count = 0
