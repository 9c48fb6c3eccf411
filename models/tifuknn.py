"""TIFU-KNN (Hu, He, Gao, Zhang: "Modeling Personalized Item Frequency Information for
Next-basket Recommendation", SIGIR 2020), the published next-basket baseline the need model
is measured against, as in the authors' code and the reproduction of Li et al. (TOIS 2023).

A user's n baskets (chronological; here a basket is the user's purchases of one local day)
are item indicator vectors, basket i weighted ``within_decay ** (n - i - 1)`` (the latest 1).
They are split into ``n_groups`` consecutive blocks of equal size (the later blocks one
larger when n does not divide; with fewer baskets than groups each basket is a block); a
block's vector is the mean of its baskets', block b weighted ``group_decay ** (n_groups - b
- 1)``; the user vector is their sum over the number of blocks. The prediction blends the
user's vector with the mean vector of its ``k_neighbours`` nearest users (Euclidean, the
user among them, as in the reference code): ``alpha * u + (1 - alpha) * mean``.

Pure numpy / scipy / scikit-learn; the need step and the replay call it with the baskets
before a cut-off.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

# The Instacart setting of the reproduction (Li et al. 2023, from the authors' search).
DEFAULTS = {"n_groups": 3, "within_decay": 0.9, "group_decay": 0.7, "k_neighbours": 900, "alpha": 0.9}


def _blocks(n: np.ndarray, pos: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(block index, block size, number of blocks) of basket ``pos`` (0 = oldest) of ``n``."""
    few = n < n_groups
    base = np.maximum(n // n_groups, 1)
    extra = np.where(few, 0, n - base * n_groups)          # the last ``extra`` blocks hold base + 1
    small = (n_groups - extra) * base                        # baskets in the blocks of size base
    block = np.where(pos < small, pos // base, (n_groups - extra) + (pos - small) // (base + 1))
    size = np.where(pos < small, base, base + 1)
    return (np.where(few, pos, block), np.where(few, 1, size), np.where(few, n, n_groups))


def user_vectors(baskets: pd.DataFrame, n_groups: int = 3, within_decay: float = 0.9, group_decay: float = 0.7):
    """(users, items, matrix): every user's time-decayed grouped item-frequency vector.

    ``baskets``: one row per (user_id, basket, item) with a sortable ``basket`` (a day);
    ``users`` and ``items`` are sorted pandas Indexes, ``matrix`` a CSR users x items."""
    from scipy import sparse

    b = baskets[["user_id", "basket", "item"]].drop_duplicates()
    users = pd.Index(sorted(b.user_id.unique()))
    items = pd.Index(sorted(b.item.unique()))
    if b.empty:
        return users, items, sparse.csr_matrix((0, 0))
    order = b[["user_id", "basket"]].drop_duplicates().sort_values(["user_id", "basket"], ignore_index=True)
    n = order.groupby("user_id").basket.transform("size").to_numpy()
    pos = order.groupby("user_id").cumcount().to_numpy()
    block, size, real = _blocks(n, pos, n_groups)
    order["weight"] = (within_decay ** (n - pos - 1)) / size * (group_decay ** (n_groups - block - 1)) / real
    rows = b.merge(order, on=["user_id", "basket"])
    matrix = sparse.csr_matrix((rows.weight.to_numpy(float), (users.get_indexer(rows.user_id),
                                                               items.get_indexer(rows.item))),
                               shape=(len(users), len(items)))
    matrix.sum_duplicates()
    return users, items, matrix


def _neighbour_average(matrix, rows: np.ndarray, k_neighbours: int):
    """Sparse (len(rows) x users): row r holds 1/k at the k nearest users of user ``rows[r]``."""
    from scipy import sparse
    from sklearn.neighbors import NearestNeighbors

    n = matrix.shape[0]
    k = min(k_neighbours, n)
    _, idx = NearestNeighbors(n_neighbors=k, metric="euclidean", algorithm="brute").fit(matrix).kneighbors(matrix[rows])
    return sparse.csr_matrix((np.full(idx.size, 1.0 / k), (np.repeat(np.arange(len(rows)), k), idx.ravel())),
                             shape=(len(rows), n))


def scores(matrix, k_neighbours: int = 900, alpha: float = 0.9, rows: np.ndarray | None = None) -> np.ndarray:
    """``alpha * u + (1 - alpha) * mean of the k nearest users`` (dense, one row per user of
    ``rows``, default all users; the neighbours are sought among all users)."""
    rows = np.arange(matrix.shape[0]) if rows is None else np.asarray(rows)
    if matrix.shape[0] == 0 or not len(rows):
        return np.zeros((len(rows), matrix.shape[1]))
    average = _neighbour_average(matrix, rows, k_neighbours)
    return alpha * matrix[rows].toarray() + (1.0 - alpha) * (average @ matrix).toarray()


def recommend(baskets: pd.DataFrame, k: int = 10, users=None, chunk: int = 2000, **params) -> pd.DataFrame:
    """The top ``k`` items (user_id, item, score, rank) of each user of ``users`` (default:
    every user in ``baskets``; a user without baskets gets none). Ties are broken by the item
    key, so the lists are deterministic; an item with a zero score is never recommended. Users
    are scored ``chunk`` at a time (a dense chunk x items block)."""
    p = {**DEFAULTS, **params}
    known, items, matrix = user_vectors(baskets, p["n_groups"], p["within_decay"], p["group_decay"])
    wanted = known if users is None else known.intersection(pd.Index(users)).sort_values()
    rows = known.get_indexer(wanted)
    out = []
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        s = scores(matrix, p["k_neighbours"], p["alpha"], part)
        top = np.argsort(-np.round(s, 12), axis=1, kind="stable")[:, :k]    # items are sorted: ties by key
        out.append(pd.DataFrame({"user_id": np.repeat(known.to_numpy()[part], top.shape[1]),
                                 "item": items.to_numpy()[top.ravel()],
                                 "score": np.take_along_axis(s, top, axis=1).ravel(),
                                 "rank": np.tile(np.arange(1, top.shape[1] + 1), len(part))}))
    if not out:
        return pd.DataFrame(columns=["user_id", "item", "score", "rank"])
    recs = pd.concat(out, ignore_index=True)
    return recs[recs.score > 0].reset_index(drop=True)
