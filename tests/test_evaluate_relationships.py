"""The ranking metrics of the relationship evaluation, on hand-made baskets."""
import math

import pandas as pd
import pytest

from bundlecast.jobs.tools.evaluate_relationships import rank_metrics


def test_hit_rate_ndcg_and_coverage():
    baskets = pd.DataFrame({"order_id": ["o1", "o1", "o2", "o2", "o2"],
                            "site_id": ["s"] * 5, "item_id": ["a", "b", "a", "c", "d"]})
    ranked = {("s", "a"): [("s", "x"), ("s", "b")],           # o1: b at rank 2; o2: nothing
              ("s", "b"): [("s", "a")],                       # o1: a at rank 1
              ("s", "c"): [("s", "d"), ("s", "a")]}           # o2: d, a at ranks 1, 2; d unknown
    m = rank_metrics(baskets, ranked, k=10)
    assert m["queries"] == 5
    assert m["hit_rate_at_10"] == pytest.approx(3 / 5)
    assert m["coverage"] == pytest.approx(4 / 5)
    d = lambda r: 1 / math.log2(r + 1)  # noqa: E731
    expected = [d(2) / d(1), 1.0, 0.0, 1.0, 0.0]
    assert m["ndcg_at_10"] == pytest.approx(sum(expected) / 5)


def test_cut_at_k():
    baskets = pd.DataFrame({"order_id": ["o", "o"], "site_id": ["s", "s"], "item_id": ["a", "b"]})
    ranked = {("s", "a"): [("s", "x"), ("s", "b")]}
    assert rank_metrics(baskets, ranked, k=1)["hit_rate_at_1"] == 0.0
    assert rank_metrics(baskets, ranked, k=2)["hit_rate_at_2"] == 0.5
