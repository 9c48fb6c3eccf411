"""``bundlecast sql`` is read-only: statements are parsed, not run, before anything else."""
import pytest

from bundlecast.jobs.tools.sql_guard import RefusedQuery, check_read_only

REFUSED = [
    "DROP TABLE bundlecast.orders", "DELETE FROM bundlecast.quarantine", "INSERT INTO bundlecast.orders VALUES (1)",
    "UPDATE bundlecast.orders SET status = 'x'", "CREATE TABLE z AS SELECT 1", "TRUNCATE TABLE bundlecast.orders",
    "MERGE INTO bundlecast.orders t USING bundlecast.orders s ON true WHEN MATCHED THEN DELETE",
    "INSERT OVERWRITE DIRECTORY '/tmp/x' SELECT 1", "CACHE TABLE bundlecast.orders", "SET spark.sql.runSQLOnFiles=true",
    "USE default", "ADD JAR /tmp/evil.jar", "ALTER TABLE bundlecast.orders ADD COLUMN x int",
    "CREATE TEMPORARY VIEW v AS SELECT 1", "SELECT * FROM text.`/etc/hostname`", "SELECT * FROM delta.`/tmp/wh/orders`",
    "SELECT * FROM bundlecast.orders WHERE order_id IN (SELECT value FROM text.`/etc/passwd`)",
    "SELECT 1; DROP TABLE bundlecast.orders",
]
ALLOWED = ["SELECT * FROM bundlecast.orders LIMIT 5", "WITH x AS (SELECT 1 AS a) SELECT a FROM x", "VALUES (1)",
           "SHOW TABLES", "DESCRIBE bundlecast.orders", "EXPLAIN SELECT 1"]


@pytest.mark.parametrize("query", REFUSED)
def test_writes_and_file_reads_are_refused_in_one_line(spark, query):
    with pytest.raises(RefusedQuery) as err:
        check_read_only(spark, query)
    assert "\n" not in str(err.value) and str(err.value).startswith("sql: ")


@pytest.mark.parametrize("query", ALLOWED)
def test_queries_and_read_only_commands_pass(spark, query):
    check_read_only(spark, query)
