"""Query: the items most related to one item, with every signal (``bundlecast related``)."""
from __future__ import annotations

from bundlecast.jobs.core.config import config
from bundlecast.jobs.core.errors import BundlecastError
from bundlecast.jobs.core.tables import Tables


def related_items(item: str, k: int = 10, relation: str | None = None, site: str | None = None,
                  segment: str | None = None, spark=None, cfg: dict | None = None) -> list[dict]:
    """The k items most related to ``item`` (optionally of one relation), best first, with
    every signal. ``segment`` ranks by that segment's fitted weights."""
    from pyspark.sql import functions as F

    cfg = cfg or config()
    if spark is None:
        from bundlecast.jobs.core.spark import get_spark
        spark = get_spark("bundlecast-related", cfg)
    if relation not in (None, "complementary", "alternative", "other"):
        raise BundlecastError(f"relation must be complementary, alternative or other, not {relation!r}")
    rel = Tables(spark, cfg).read("item_relationships").filter(F.col("item_a") == item)
    if site:
        rel = rel.filter(F.col("site_a") == site)
    if relation:
        rel = rel.filter(F.col("relation") == relation)
    order = F.coalesce(F.col("segment_scores")[segment], F.col("score")) if segment else F.col("score")
    return [r.asDict() for r in rel.withColumn("_order", order).orderBy(F.col("_order").desc(), "site_b", "item_b")
            .drop("_order").limit(k).collect()]


def render_related(item: str, rows: list[dict]) -> str:
    if not rows:
        return f"no related items for {item} (unknown item, or no relationships scored yet)"
    head = (f"{'site':9s} {'item':12s} {'relation':13s} {'score':>6s} {'compl':>6s} {'altern':>6s} {'co-buy':>7s} "
            f"{'lift':>6s} {'co-view':>7s} {'text':>5s} {'stock':>6s}")
    lines = [f"related to {rows[0]['site_a']}/{item}:", head]
    for r in rows:
        lines.append(f"{r['site_b']:9s} {r['item_b']:12s} {r['relation']:13s} {r['score']:6.3f} "
                     f"{r['complementary_score']:6.3f} {r['alternative_score']:6.3f} "
                     f"{r['co_purchase_support']:>7d} {r['co_purchase_lift']:6.1f} {r['co_view_support']:>7d} "
                     f"{r['text_similarity']:5.2f} {r['inventory_correlation']:6.2f}")
    return "\n".join(lines)
