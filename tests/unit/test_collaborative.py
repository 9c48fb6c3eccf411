"""Implicit-feedback ALS (models.collaborative) on hand-built matrices: the objective's
solution, the recommendations a planted structure implies, and a reproducible order."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bundlecast.models import collaborative as cf


def _two_groups(n_users=40, n_items=10, seed=0):
    """Users 0-19 buy from items 0-4, users 20-39 from items 5-9; each user skips one item of its group."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        group = range(0, 5) if u < n_users // 2 else range(5, 10)
        skipped = list(group)[u % 5]
        rows += [(f"u{u:02d}", f"s|i{i}", float(rng.integers(1, 4))) for i in group if i != skipped]
    return pd.DataFrame(rows, columns=["user_id", "item_key", "strength"])


def test_each_half_step_solves_its_normal_equations():
    ratings = _two_groups()
    u, users = pd.factorize(ratings.user_id, sort=True)
    i, items = pd.factorize(ratings.item_key, sort=True)
    from scipy import sparse
    rng = np.random.default_rng(1)
    V = rng.normal(size=(len(items), 4))
    c1 = sparse.csr_matrix((10.0 * ratings.strength.to_numpy(), (u, i)), shape=(len(users), len(items)))
    U = cf._half_step(c1, V, reg=0.1)
    # Row 3 by the textbook formula: (V^T C_u V + reg n_u I) x = V^T C_u p_u.
    row = c1[3].toarray().ravel()
    C = np.diag(1.0 + row)
    p = (row > 0).astype(float)
    A = V.T @ C @ V + 0.1 * p.sum() * np.eye(4)
    assert U[3] == pytest.approx(np.linalg.solve(A, V.T @ C @ p))


def test_the_skipped_item_of_the_users_own_group_is_recommended_first():
    ratings = _two_groups()
    recs = cf.recommend(ratings, ratings.user_id.unique(), k=5, rank=4, iterations=15)
    assert recs.groupby("user_id").size().eq(5).all()
    for user, top in recs.groupby("user_id", sort=False):
        n = int(user[1:])
        own = {f"s|i{i}" for i in (range(0, 5) if n < 20 else range(5, 10))}
        assert set(top.item_key) == own, user  # the 5 best are the user's group, bought or not
        assert top.cf_score.is_monotonic_decreasing


def test_recommendations_are_reproducible_and_skip_unknown_users():
    ratings = _two_groups()
    first = cf.recommend(ratings, ["u01", "nobody", "u30"], k=3)
    assert set(first.user_id) == {"u01", "u30"}
    pd.testing.assert_frame_equal(first, cf.recommend(ratings.sample(frac=1, random_state=3), ["u30", "u01", "u01"], k=3)
                                  .sort_values(["user_id"], kind="stable").reset_index(drop=True)
                                  .pipe(lambda f: f.set_index("user_id").loc[["u01", "u30"]].reset_index()))
    assert cf.recommend(ratings.iloc[:0], ["u01"], k=3).empty
