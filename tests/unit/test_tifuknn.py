"""TIFU-KNN against a line-by-line transcription of the reference algorithm, and the
next-basket metrics (recall, NDCG, repeat / explore) on lists worked out by hand."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bundlecast.models import need as nm
from bundlecast.models import tifuknn


def _reference_vector(baskets: list[set], items: list, n_groups: int, r_b: float, r_g: float) -> np.ndarray:
    """The user vector as the authors' code computes it, loops and all."""
    n = len(baskets)
    vecs = []
    for i, basket in enumerate(baskets):
        v = np.zeros(len(items))
        for it in basket:
            v[items.index(it)] = r_b ** (n - i - 1)
        vecs.append(v)
    if n < n_groups:
        groups = vecs
    else:
        base, extra = n // n_groups, n % n_groups
        sizes = [base] * (n_groups - extra) + [base + 1] * extra
        groups, start = [], 0
        for size in sizes:
            groups.append(sum(vecs[start:start + size]) / size)
            start += size
    out = sum(g * r_g ** (n_groups - b - 1) for b, g in enumerate(groups))
    return out / len(groups)


@pytest.mark.parametrize("n_baskets", [1, 2, 3, 4, 7, 11])
def test_user_vectors_follow_the_reference_grouping_and_decays(n_baskets):
    rng = np.random.default_rng(n_baskets)
    items = [f"i{j}" for j in range(6)]
    baskets = [set(rng.choice(items, size=rng.integers(1, 4), replace=False)) for _ in range(n_baskets)]
    rows = pd.DataFrame([{"user_id": "u", "basket": f"2026-01-{i + 1:02d}", "item": it}
                         for i, b in enumerate(baskets) for it in b])
    users, known, matrix = tifuknn.user_vectors(rows, n_groups=3, within_decay=0.9, group_decay=0.7)
    expected = _reference_vector(baskets, list(known), 3, 0.9, 0.7)
    np.testing.assert_allclose(matrix.toarray()[0], expected, rtol=1e-12)


def test_neighbours_bring_items_the_user_never_bought():
    """Three users buy coffee and milk; the third also buys sugar. A fourth who only bought
    coffee gets milk (and then sugar) from her neighbours: explore items; a lone user with
    no neighbour overlap still gets her own items first."""
    rows = []
    for u, baskets in {"a": [["coffee", "milk"], ["coffee", "milk"]], "b": [["coffee", "milk"]] * 3,
                       "c": [["coffee", "milk", "sugar"]], "d": [["coffee"], ["coffee"]], "e": [["tea"]]}.items():
        rows += [{"user_id": u, "basket": f"2026-01-0{i + 1}", "item": it} for i, b in enumerate(baskets) for it in b]
    recs = tifuknn.recommend(pd.DataFrame(rows), k=3, k_neighbours=3, alpha=0.7)
    d = recs[recs.user_id == "d"].sort_values("rank").item.tolist()
    assert d[0] == "coffee" and "milk" in d
    assert recs[recs.user_id == "e"].sort_values("rank").item.tolist()[0] == "tea"
    again = tifuknn.recommend(pd.DataFrame(rows).sample(frac=1, random_state=3), k=3, k_neighbours=3, alpha=0.7)
    pd.testing.assert_frame_equal(recs, again)  # deterministic whatever the row order
    only = tifuknn.recommend(pd.DataFrame(rows), k=3, users=["d", "nobody"], k_neighbours=3, alpha=0.7)
    assert set(only.user_id) == {"d"}


def test_basket_metrics_count_hits_rank_and_the_repeat_and_explore_parts():
    truth = pd.DataFrame({"user_id": ["u", "u", "v"], "item": ["x", "y", "z"], "repeat": [True, False, True]})
    recs = pd.DataFrame({"user_id": ["u", "u", "v"], "item": ["y", "q", "w"], "rank": [2, 1, 1]})
    m = nm.basket_metrics(recs, truth, k=10)
    assert m["recall_at_10"] == pytest.approx((1 / 2 + 0) / 2)
    ideal_u = 1 + 1 / np.log2(3)
    assert m["ndcg_at_10"] == pytest.approx(((1 / np.log2(3)) / ideal_u + 0) / 2)
    assert m["recall_repeat_at_10"] == 0.0          # x (u) and z (v) missed
    assert m["recall_explore_at_10"] == 1.0         # y found
    assert nm.basket_metrics(recs, truth, k=1)["recall_at_1"] == 0.0  # y is at rank 2


def test_top_k_lists_break_ties_by_item():
    frame = pd.DataFrame({"user_id": ["u"] * 3, "site_id": ["s"] * 3, "item_id": ["c", "a", "b"]})
    lists = nm.top_k_lists(frame, np.array([0.5, 0.5, 0.9]), 2)
    assert lists.item.tolist() == ["s|b", "s|a"] and lists["rank"].tolist() == [1, 2]
