"""``bundlecast sql`` is read-only unless asked otherwise.

A statement is parsed (not run) first; only a query (SELECT, WITH, VALUES, TABLE) or a
read-only command (SHOW, DESCRIBE, EXPLAIN) goes on. Writes (INSERT, DELETE, UPDATE,
MERGE, DROP, CREATE, ALTER, TRUNCATE, CACHE, SET, USE, ADD JAR...) are refused with one
line, and so are reads of files by path (``text.`/etc/hostname```, ``delta.`/path```):
the session also runs with ``spark.sql.runSQLOnFiles=false``, so only catalog tables
resolve. ``--allow-writes`` is the explicit maintenance switch.
"""
from __future__ import annotations

import re

from bundlecast.jobs.core.errors import BundlecastError

READ_ONLY_COMMANDS = {"ShowTables", "ShowTablesExtended", "ShowColumns", "DescribeRelation", "DescribeColumn",
                      "ShowTableProperties", "ShowViews", "ShowNamespaces", "ShowFunctions", "DescribeFunction",
                      "DescribeNamespace", "ShowCreateTable", "ShowPartitions", "ExplainCommand"}
WRITES_THAT_ARE_NOT_COMMANDS = {"InsertIntoStatement", "InsertIntoDir"}
FILE_SOURCES = {"text", "csv", "json", "parquet", "orc", "avro", "delta", "binaryfile", "jdbc", "hive"}
_RELATION = re.compile(r"UnresolvedRelation \[([^\]]*)\]")


class RefusedQuery(BundlecastError):
    """A statement ``bundlecast sql`` will not run without ``--allow-writes``."""


def statement_kind(spark, query: str) -> tuple[str, bool, list[list[str]]]:
    """(plan node name, is a command, relations named) of the parsed, unrun statement."""
    parser = spark._jsparkSession.sessionState().sqlParser()
    try:
        plan = parser.parsePlan(query)
    except Exception as exc:  # a syntax error, or several statements
        first = next((line for line in str(exc).splitlines() if line.strip()), "syntax error")
        raise RefusedQuery(f"sql: not one statement Spark can parse: {first.strip()[:200]}") from None
    command = spark._jvm.java.lang.Class.forName("org.apache.spark.sql.catalyst.plans.logical.Command", False,
                                                 plan.getClass().getClassLoader())
    relations = [[p.strip() for p in m.split(",")] for m in _RELATION.findall(plan.toString())]
    return plan.nodeName(), bool(command.isInstance(plan)), relations


def check_read_only(spark, query: str) -> None:
    """Refuse (one line) anything but a query or a read-only command over catalog tables."""
    name, is_command, relations = statement_kind(spark, query)
    if (is_command and name not in READ_ONLY_COMMANDS) or name in WRITES_THAT_ARE_NOT_COMMANDS:
        raise RefusedQuery(f"sql: {name} changes state; bundlecast sql is read-only (use --allow-writes for "
                           "maintenance)")
    for parts in relations:
        if len(parts) > 1 and (parts[0].lower() in FILE_SOURCES or any(p.startswith("/") or "://" in p for p in parts)):
            raise RefusedQuery(f"sql: reading files by path ({'.'.join(parts)}) is refused: query catalog tables")


def read_only_session(spark) -> None:
    """Only catalog tables resolve: no ``format.`path``` reads."""
    spark.conf.set("spark.sql.runSQLOnFiles", "false")
