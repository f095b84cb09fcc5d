"""Exact and near-duplicate detection: hashes of normalised text, and MinHash LSH (datasketch).

Near-duplicates are found with datasketch's `MinHashLSH` over word-shingle MinHashes. The signatures are built
the fast way datasketch supports: one shared set of permutations (`MinHash.bulk`, no per-record permutation
setup), vectorised `update_batch`, a C hash (crc32) instead of SHA-1, and `LeanMinHash` in the index. Records
are streamed in order, so the first occurrence is kept and every later near-copy points at it.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH
from datasketch.lsh import _optimal_param

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


class BandTables:
    """MinHash LSH banding (datasketch's band sizes for the threshold and `LSH_WEIGHTS`) in compact tables: per
    band, the hash of the band's values maps to a record key (a list only on a collision). datasketch's in-memory
    `MinHashLSH` keeps a 100-byte band key and a one-element set per band per record: 4.7 KB a record measured,
    the largest part of the filter's memory; these tables keep an int and a dict slot (~1.3 KB). A hash collision
    only adds a candidate, and every candidate is verified, so the answers are datasketch's."""

    def __init__(self, threshold: float, num_perm: int) -> None:
        self.bands, self.rows = _optimal_param(threshold, num_perm, *LSH_WEIGHTS)
        self.tables: list[dict[int, Any]] = [{} for _ in range(self.bands)]

    def _hashes(self, sig: LeanMinHash) -> list[int]:
        data, width = sig.hashvalues.tobytes(), self.rows * sig.hashvalues.itemsize
        return [hash(data[b * width:(b + 1) * width]) for b in range(self.bands)]

    def insert(self, key: int, sig: LeanMinHash) -> None:
        for table, h in zip(self.tables, self._hashes(sig), strict=True):
            held = table.setdefault(h, key)
            if held is not key:
                if isinstance(held, list):
                    held.append(key)
                else:
                    table[h] = [held, key]

    def query(self, sig: LeanMinHash) -> set[int]:
        found: set[int] = set()
        for table, h in zip(self.tables, self._hashes(sig), strict=True):
            held = table.get(h)
            if isinstance(held, list):
                found.update(held)
            elif held is not None:
                found.add(held)
        return found


class NearDuplicateIndex:
    """Stream records in; `add` returns the key of an earlier near-duplicate or None, in which case the record
    joins the index. LSH proposes candidates; each is confirmed with the exact Jaccard of the hashed shingle
    sets (a 128-permutation estimate is off by 0.035 on average, enough to miss a planted copy), kept packed."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 128) -> None:
        self.threshold = threshold
        self.lsh = BandTables(threshold, num_perm)
        self.sets: dict[int, bytes] = {}

    def insert(self, key: int, sig: LeanMinHash, shingle_set: frozenset[int]) -> None:
        self.lsh.insert(key, sig)
        self.sets[key] = packed(shingle_set)

    def query(self, sig: LeanMinHash, shingle_set: frozenset[int]) -> int | None:
        best, best_j = None, -1.0
        for key in self.lsh.query(sig):
            j = jaccard(shingle_set, unpacked(self.sets[key]))
            if j >= self.threshold and (j > best_j or (j == best_j and key < best)):
                best, best_j = key, j
        return best

    def add(self, key: int, sig: LeanMinHash, shingle_set: frozenset[int]) -> int | None:
        hit = self.query(sig, shingle_set)
        if hit is None:
            self.insert(key, sig, shingle_set)
        return hit


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
        for i, sig, sh in zip(part, sigs, sets, strict=True):
            hit = index.add(i, sig, sh)
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
