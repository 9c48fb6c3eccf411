"""The one place a SparkSession is built: Delta extensions, master, catalog, jar cache.

Catalog (``storage.catalog``): ``session`` (default) registers each Delta table as
``bundlecast.<name>`` in the session's own catalog when the session first uses it, from its
location; a Delta table carries its schema in its log, so there is nothing else to share
and any number of drivers (the warm driver, a spark-submit task, ``bundlecast sql``, an
analyst's notebook) use one state directory at once. ``hive`` keeps a Hive metastore at
``storage.metastore_url`` for engines that read tables by name from a metastore (use a
metastore database server then: embedded Derby admits one driver at a time).

Jars: the Maven coordinates in ``spark.packages`` are resolved once by Ivy into
``spark.jar_cache`` (under BUNDLECAST_HOME); the resolved jar list is recorded in
``jars.txt`` and later sessions (and spark-submit) use those files directly, so nothing is
downloaded again. Jobs receive the session as an argument; nothing creates one at import.
"""
from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

from bundlecast.jobs.core.config import CONF_DIR, config
from bundlecast.jobs.core.errors import BundlecastError, ConfigError, one_line

log = logging.getLogger(__name__)
DELTA_EXTENSIONS = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def _jar_list_file(cfg: dict) -> Path:
    return Path(cfg["spark"]["jar_cache"]) / "jars.txt"


def cached_jars(cfg: dict | None = None) -> list[str] | None:
    """The jar files fetched earlier for the configured packages, or None if not fetched yet."""
    cfg = cfg or config()
    listing = _jar_list_file(cfg)
    if not listing.exists():
        return None
    lines = listing.read_text().splitlines()
    if not lines or lines[0] != "# " + ",".join(cfg["spark"]["packages"]):
        return None  # packages changed since the fetch
    jars = [line for line in lines[1:] if line]
    return jars if jars and all(Path(j).exists() for j in jars) else None


def _artifact(jar_name: str, ivy: bool) -> str:
    """'org.apache.hadoop_hadoop-client-api-3.4.2.jar' (Ivy: org_artifact-rev) or
    'hadoop-client-api-3.5.0.jar' (Spark's own) -> 'hadoop-client-api'."""
    base = jar_name.split("_", 1)[1] if ivy else jar_name
    return re.sub(r"-\d[\w.\-]*\.jar$", "", base)


def _record_jars(cfg: dict) -> list[str]:
    """Record the fetched jars, leaving out artifacts Spark already ships (older transitive
    versions of Hadoop, Jackson, Parquet... would otherwise shadow Spark's own)."""
    import pyspark

    bundled = {_artifact(p.name, ivy=False) for p in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}
    ivy_jars = Path(cfg["spark"]["jar_cache"]) / "ivy" / "jars"
    jars = sorted(str(p) for p in ivy_jars.glob("*.jar") if _artifact(p.name, ivy=True) not in bundled)
    if jars:
        _jar_list_file(cfg).write_text("# " + ",".join(cfg["spark"]["packages"]) + "\n" + "\n".join(jars) + "\n")
    return jars


UNSAFE_PATH = re.compile(r"[\"'\\\n\r\t,;$`]")


def check_paths(cfg: dict) -> None:
    """Paths Spark's launcher must pass through a JVM command line: spaces are quoted;
    quotes, backslashes, commas, semicolons, ``$`` and control characters are refused
    in one line (they cannot be passed safely to every part: JVM options, jar lists, JDBC URLs)."""
    for what, value in (("BUNDLECAST_HOME", cfg["home"]), ("spark.jar_cache", cfg["spark"]["jar_cache"]),
                        ("the conf directory", str(CONF_DIR))):
        bad = UNSAFE_PATH.search(str(value))
        if bad:
            raise ConfigError(f"{what} {str(value)!r} contains {bad.group()!r}: Spark cannot be started with such "
                              "a path; choose one without quotes, backslashes, commas, semicolons or '$'")


def _java_option(path) -> str:
    """A path as one JVM option value (quoted when it holds spaces)."""
    text = str(path)
    return f'"{text}"' if " " in text else text


def _busy_metastore(cfg: dict) -> str | None:
    """Why the embedded metastore cannot be opened, from Derby's own log (None if not that)."""
    log_file = Path(cfg["home"]) / "metastore" / "derby.log"
    try:
        text = log_file.read_text(errors="replace")[-20000:]
    except OSError:
        return None
    if "XSDB6" in text:
        return (f"the embedded metastore under {Path(cfg['home']) / 'metastore'} is in use by another Spark driver "
                "(Derby allows one at a time): wait for it to finish, use another BUNDLECAST_HOME, or a metastore "
                "server (storage.metastore_url)")
    return None


def catalog_kind(cfg: dict) -> str:
    """``storage.catalog``: ``session`` or ``hive`` (anything else is refused in one line)."""
    kind = str(cfg["storage"].get("catalog") or "session")
    if kind not in ("session", "hive"):
        raise ConfigError(f"storage.catalog is {kind!r}: expected session or hive")
    return kind


def spark_conf(cfg: dict | None = None) -> dict[str, str]:
    """Every Spark setting a bundlecast job needs, for the builder and for spark-submit alike."""
    cfg = cfg or config()
    sp, storage = cfg["spark"], cfg["storage"]
    java_options = f"-Dlog4j2.configurationFile={_java_option(CONF_DIR / 'log4j2.properties')}"
    conf = {**DELTA_EXTENSIONS, "spark.sql.warehouse.dir": f"{storage['warehouse']}/_spark_managed"}
    if catalog_kind(cfg) == "hive":
        metastore_home = Path(cfg["home"]) / "metastore"
        java_options = f"-Dderby.system.home={_java_option(metastore_home)} {java_options}"
        conf.update({
            "spark.sql.catalogImplementation": "hive",
            "spark.hadoop.javax.jdo.option.ConnectionURL": storage["metastore_url"],
            "spark.hadoop.datanucleus.schema.autoCreateAll": "true",
            "spark.hadoop.hive.metastore.schema.verification": "false",
        })
    else:
        conf["spark.sql.catalogImplementation"] = "in-memory"
    if storage.get("s3_endpoint_url"):  # s3a:// tables on the same endpoint as everything else
        conf.update({"spark.hadoop.fs.s3a.endpoint": storage["s3_endpoint_url"],
                     "spark.hadoop.fs.s3a.path.style.access": "true"})
    conf.update({
        "spark.driver.extraJavaOptions": java_options,
        "spark.driver.memory": str(sp["driver_memory"]),
        "spark.sql.shuffle.partitions": str(sp["shuffle_partitions"]),
        # Python workers (pandas UDFs) run the interpreter that has bundlecast installed;
        # a cluster with its own Python sets these under spark.conf.
        "spark.pyspark.python": os.environ.get("PYSPARK_PYTHON", sys.executable),
        "spark.pyspark.driver.python": sys.executable,
        **{k: str(v) for k, v in (sp.get("conf") or {}).items()},
    })
    jars = cached_jars(cfg)
    if jars:
        conf["spark.jars"] = ",".join(jars)
    else:
        conf["spark.jars.packages"] = ",".join(sp["packages"])
        conf["spark.jars.ivy"] = str(Path(sp["jar_cache"]) / "ivy")
    return conf


def get_spark(app_name: str | None = None, cfg: dict | None = None, extra_conf: dict | None = None):
    """Build (or return the active) SparkSession for bundlecast.

    Under spark-submit the master, jars and driver options were fixed at launch; otherwise
    they come from configuration (``spark.master``, ``local[*]`` by default).
    """
    from pyspark.sql import SparkSession

    cfg = cfg or config()
    check_paths(cfg)
    if catalog_kind(cfg) == "hive":
        Path(cfg["home"], "metastore").mkdir(parents=True, exist_ok=True)
    Path(cfg["spark"]["jar_cache"]).mkdir(parents=True, exist_ok=True)
    fetching = cached_jars(cfg) is None
    # An in-process session takes its workers' Python from the environment, not the conf.
    os.environ.setdefault("PYSPARK_PYTHON", spark_conf(cfg)["spark.pyspark.python"])
    builder = SparkSession.builder.appName(app_name or cfg["spark"]["app_name"])
    if not os.environ.get("PYSPARK_GATEWAY_PORT"):
        builder = builder.master(cfg["spark"]["master"])
    for key, value in {**spark_conf(cfg), **(extra_conf or {})}.items():
        builder = builder.config(key, value)
    if fetching:
        log.warning("fetching Spark jars %s into %s (once)", cfg["spark"]["packages"], cfg["spark"]["jar_cache"])
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # JAVA_GATEWAY_EXITED and friends: the JVM's reason is on stderr above
        raise BundlecastError(f"Spark could not start ({one_line(exc)}); run with BUNDLECAST_DEBUG=1 for the "
                              "JVM's output") from None
    spark.sparkContext.setLogLevel("ERROR")
    # PySpark logs every failed query with the JVM stack trace; bundlecast reports errors
    # itself as one line (BUNDLECAST_DEBUG=1 keeps the full log).
    if not os.environ.get("BUNDLECAST_DEBUG"):
        for name in ("SQLQueryContextLogger", "DataFrameQueryContextLogger"):
            logging.getLogger(name).disabled = True
    if fetching:
        _record_jars(cfg)
    try:
        if not spark.catalog.databaseExists(cfg["storage"]["database"]):
            spark.sql(f"CREATE DATABASE IF NOT EXISTS {cfg['storage']['database']}")
    except Exception as exc:
        raise BundlecastError(_busy_metastore(cfg) or f"cannot open the metastore: {one_line(exc)}") from None
    return spark
