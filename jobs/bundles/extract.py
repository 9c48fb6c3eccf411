"""Reads of the bundles step (prices and stock come from ``jobs/core/commerce``)."""
from __future__ import annotations

import pandas as pd

from bundlecast.jobs.core.commerce import available_stock, user_warehouses

# The priced items' columns need bundles use, typed (an empty price list is still a frame:
# a shop whose items have no cost gets no need bundles, counted, not a schema error).
PRICED = {"key": "string", "price": "double", "cost": "double", "volume_l": "double", "weight_kg": "double"}
PRICED_TYPES = {"key": str, "price": float, "cost": float, "volume_l": float, "weight_kg": float}


def need_bundle_inputs(tables, dt: str, prices: pd.DataFrame) -> dict:
    """The frames ``transform.need_bundles`` needs for run date ``dt``."""
    from pyspark.sql import functions as F

    return {"preds": tables.read("need_predictions").filter(F.col("dt") == F.lit(dt).cast("date")),
            "priced": tables.spark.createDataFrame(prices.reset_index()[list(PRICED)].astype(PRICED_TYPES),
                                                   schema=", ".join(f"{c} {t}" for c, t in PRICED.items())),
            "user_warehouse": user_warehouses(tables), "stock": stock_as_of_run(tables, dt)}


def stock_as_of_run(tables, dt: str):
    """Available stock less the reservations as the step's first run for ``dt`` saw them
    (``Tables.pinned``): a re-run does not see the reservations that night's proactive step
    made after bundles ran."""
    return available_stock(tables, reservations=tables.pinned("inventory_reservations", dt, "bundles"))


def relationship_frame(tables) -> pd.DataFrame:
    """Every scored item pair (``a`` and ``b`` as ``site|item`` keys), as pandas."""
    from pyspark.sql import functions as F

    return tables.read("item_relationships").select(
        F.concat_ws("|", "site_a", "item_a").alias("a"), F.concat_ws("|", "site_b", "item_b").alias("b"),
        "relation", "score", "complementary_score", "alternative_score", "co_purchase_rate",
        "co_view_support", "view_one_bought_support", "rank").toPandas()
