"""Step ``forecast``: daily demand forecast per item (x region) for the next ``forecast.horizon_days`` days.

    spark-submit jobs/submit.py forecast --date 2026-11-20
    bundlecast forecast --date 2026-11-20

Reads ``orders``, ``order_lines``, ``items``, ``users``, ``weather``, ``calendar_events``.
Writes ``demand_forecast``, ``forecast_metrics``.

Demand is the units of non-cancelled order lines per day, by item and by the buyer's home
region (``forecast.level``). Every series is forecast in one ``groupBy(level)
.applyInPandas`` pass (``models/forecast.py``): a rolling-origin backtest of its method and
of seasonal naive on the same windows, then the forecast. Prophet gets weekly (and, with a
year of history, yearly) seasonality, the ``calendar_events`` of the region and the
network as holidays, and the region's weather as regressors (observations for the past,
the feed's forecast rows for the future). Short or intermittent series use SBA; a series
whose method loses its backtest to seasonal naive is forecast with seasonal naive. The
table says which method made each forecast, and why.

Writes ``demand_forecast`` and ``forecast_metrics`` (replacing the run date's rows) and one
MLflow run in experiment ``bundlecast-demand-forecast`` whose id is on every row, and
its ``step_runs`` row. Reads ``orders``, ``order_lines``, ``users``, ``items``, ``weather``,
``calendar_events``.

Modules: ``extract`` (reads), ``transform`` (pure: settings, the per-series function, the
backtest summary), ``load`` (writes), ``job`` (wires them, MLflow).
"""
