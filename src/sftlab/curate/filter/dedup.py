"""Exact and near-duplicate detection: hashes of normalised text, and MinHash LSH (datasketch).

Near-duplicates are found with datasketch's `MinHashLSH` over word-shingle MinHashes. The signatures are built
the fast way datasketch supports: one shared set of permutations (`MinHash.bulk`, no per-record permutation
setup), vectorised `update_batch`, a C hash (crc32) instead of SHA-1, and `LeanMinHash` in the index. Records
are streamed in order, so the first occurrence is kept and every later near-copy points at it.
"""

from __future__ import annotations

import hashlib
import zlib
from array import array
from collections.abc import Iterable, Sequence

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

from sftlab.curate.filter.lsh import MERGE_EVERY, BandTables
from sftlab.textutil import ngrams, normalize, words


def exact_digest(text: str) -> bytes:
    """16 bytes naming a normalised text: what exact dedup keeps per record (a 49-byte object, not a hex str)."""
    return hashlib.blake2b(normalize(text).encode(), digest_size=16).digest()


def exact_key(text: str) -> str:
    return exact_digest(text).hex()


def exact_duplicates(texts: Sequence[str]) -> dict[int, int]:
    """{index of a duplicate: index of the first record with the same normalised text}."""
    first: dict[str, int] = {}
    dup: dict[int, int] = {}
    for i, t in enumerate(texts):
        k = exact_key(t)
        if k in first:
            dup[i] = first[k]
        else:
            first[k] = i
    return dup


def _crc32(b: bytes) -> int:
    return zlib.crc32(b)


def shingles(text: str, n: int = 3) -> list[bytes]:
    return [g.encode() for g in set(ngrams(words(text), n))]


def signatures(texts: Iterable[str], num_perm: int = 128, ngram: int = 3, seed: int = 1) -> list[LeanMinHash]:
    return sketch(texts, num_perm, ngram, seed)[0]


def sketch(texts: Iterable[str], num_perm: int = 128, ngram: int = 3,
           seed: int = 1) -> tuple[list[LeanMinHash], list[frozenset[int]]]:
    """MinHash signatures (for LSH candidates) and hashed shingle sets (for the exact Jaccard check)."""
    sets = [shingles(t, ngram) for t in texts]
    hashed = [frozenset(map(_crc32, s)) for s in sets]
    return [LeanMinHash(m) for m in MinHash.bulk(sets, num_perm=num_perm, seed=seed, hashfunc=_crc32)], hashed


def jaccard(a: frozenset[int], b: frozenset[int]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


# LSH bands tuned for recall: a missed duplicate stays in the data, while a false candidate only costs one
# signature comparison (every candidate is verified). With (0.5, 0.5) a pair at threshold + 0.05 is found only
# ~67% of the time; with (0.1, 0.9) ~98%.
LSH_WEIGHTS = (0.1, 0.9)
SKETCH_CHUNK = 10000  # records sketched at once: their shingles and signatures are ~8 KB a record while held


def packed(shingle_set: frozenset[int]) -> bytes:
    """A hashed shingle set as uint32 bytes: 4 bytes a shingle instead of ~100 in a frozenset of Python ints
    (measured: the index held ~3 KB per record in those sets, the largest part of its memory)."""
    return np.fromiter(shingle_set, dtype=np.uint32, count=len(shingle_set)).tobytes()


def unpacked(blob: bytes) -> frozenset[int]:
    return frozenset(np.frombuffer(blob, dtype=np.uint32).tolist())


class NearDuplicateIndex:
    """Stream records in; `add` returns the key of an earlier near-duplicate or None, in which case the record
    joins the index. LSH (`lsh.BandTables`) proposes candidates; each is confirmed with the exact Jaccard of the
    hashed shingle sets (a 128-permutation estimate is off by 0.035 on average, enough to miss a planted copy),
    packed end to end in one bytearray. The tables hold slots (0, 1, ... in insertion order), `keys` maps a slot
    to the caller's key: 16 bytes of bookkeeping a record instead of a dict entry, an int and a bytes object."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 128) -> None:
        self.threshold = threshold
        self.lsh = BandTables(threshold, num_perm, LSH_WEIGHTS)
        self.keys = array("q")
        self.set_bytes = bytearray()
        self.set_ends = array("q")

    def _store(self, key: int, shingle_set: frozenset[int]) -> int:
        """Keep `key` and its packed shingle set; its slot for the band tables."""
        self.keys.append(key)
        self.set_bytes += packed(shingle_set)
        self.set_ends.append(len(self.set_bytes))
        return len(self.keys) - 1

    def _shingles(self, slot: int) -> frozenset[int]:
        return unpacked(self.set_bytes[self.set_ends[slot - 1] if slot else 0:self.set_ends[slot]])

    def _rows(self, sigs: Sequence[LeanMinHash]) -> np.ndarray:
        return self.lsh.band_hashes(np.stack([s.hashvalues for s in sigs]))

    def _best(self, candidates: set[int], shingle_set: frozenset[int]) -> int | None:
        """The candidate with the highest Jaccard at or above the threshold (ties: the smallest key)."""
        best, best_j = None, -1.0
        for slot in candidates:
            key, j = self.keys[slot], jaccard(shingle_set, self._shingles(slot))
            if j >= self.threshold and (j > best_j or (j == best_j and key < best)):
                best, best_j = key, j
        return best

    def insert(self, key: int, sig: LeanMinHash, shingle_set: frozenset[int]) -> None:
        self.lsh.insert(self._store(key, shingle_set), self._rows([sig])[0].tolist())
        if self.lsh.recent_count >= MERGE_EVERY:
            self.lsh.merge()

    def query(self, sig: LeanMinHash, shingle_set: frozenset[int]) -> int | None:
        rows = self._rows([sig])
        return self._best(self.lsh.recent_candidates(rows[0].tolist(), self.lsh.merged_candidates(rows)[0]),
                          shingle_set)

    def add(self, key: int, sig: LeanMinHash, shingle_set: frozenset[int]) -> int | None:
        hit = self.query(sig, shingle_set)
        if hit is None:
            self.insert(key, sig, shingle_set)
        return hit

    def add_many(self, keys: Sequence[int], sigs: Sequence[LeanMinHash],
                 shingle_sets: Sequence[frozenset[int]]) -> list[int | None]:
        """`add` each record in turn, the older (merged) entries searched once for the whole batch."""
        if not keys:
            return []
        rows = self._rows(sigs)
        older = self.lsh.merged_candidates(rows)
        hits: list[int | None] = []
        for key, row, found, sh in zip(keys, rows.tolist(), older, shingle_sets, strict=True):
            hit = self._best(self.lsh.recent_candidates(row, found), sh)
            if hit is None:
                self.lsh.insert(self._store(key, sh), row)
            hits.append(hit)
        if self.lsh.recent_count >= MERGE_EVERY:  # only between batches: `older` was searched before this one
            self.lsh.merge()
        return hits


def near_duplicates(texts: Sequence[str], threshold: float = 0.8, num_perm: int = 128, ngram: int = 3,
                    skip: set[int] | None = None, chunk: int = SKETCH_CHUNK) -> dict[int, int]:
    """{index of a near-duplicate: index of the earlier record it copies}; records in `skip` are ignored."""
    index = NearDuplicateIndex(threshold, num_perm)
    dup: dict[int, int] = {}
    skip = skip or set()
    todo = [i for i in range(len(texts)) if i not in skip]
    for start in range(0, len(todo), chunk):  # bounded memory for the shingle sets
        part = todo[start:start + chunk]
        sigs, sets = sketch([texts[i] for i in part], num_perm, ngram)
        for i, hit in zip(part, index.add_many(part, sigs, sets), strict=True):
            if hit is not None:
                dup[i] = hit
    return dup


def naive_near_duplicates(texts: Sequence[str], threshold: float = 0.8, num_perm: int = 128,
                          ngram: int = 3) -> dict[int, int]:
    """The textbook datasketch usage (a fresh MinHash per record, one `update` per shingle, SHA-1) with the same
    LSH bands: the benchmark's baseline (the benchmark reports how far the two agree)."""
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)
    sigs: dict[int, MinHash] = {}
    dup: dict[int, int] = {}
    for i, t in enumerate(texts):
        m = MinHash(num_perm=num_perm)
        for s in set(ngrams(words(t), ngram)):
            m.update(s.encode())
        hits = [k for k in lsh.query(m) if m.jaccard(sigs[k]) >= threshold]
        if hits:
            dup[i] = min(hits)
        else:
            lsh.insert(i, m)
            sigs[i] = m
    return dup
