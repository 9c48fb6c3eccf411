"""Set-up failures reach the operator as one line: odd paths, a busy metastore."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bundlecast.jobs.core.config import load_config
from bundlecast.jobs.core.errors import ConfigError
from bundlecast.jobs.core.spark import check_paths

START = ("import sys\n"
         "from bundlecast.jobs.core.cli_support import run_main\n"
         "def body():\n"
         "    from bundlecast.jobs.core.spark import get_spark\n"
         "    from bundlecast.jobs.core.tables import Tables\n"
         "    from bundlecast.jobs.core.config import config\n"
         "    spark = get_spark('setup-check')\n"
         "    t = Tables(spark, config())\n"
         "    t.upsert('sites', t.frame('sites', [dict(site_id='s', name='n', country='FR', currency='EUR', "
         "timezone='UTC', dt='2026-11-20', _source_file='f')]))\n"
         "    print('rows', t.read('sites').count())\n"
         "sys.exit(run_main(body))\n")


def _start(home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYSPARK_GATEWAY"))}
    env.update(BUNDLECAST_HOME=str(home), BUNDLECAST_SPARK_MASTER="local[1]")
    return subprocess.run([sys.executable, "-c", START], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("name", ['it"s', "it's", "a\\b", "a,b", "a;b", "$HOME"])
def test_a_home_spark_cannot_take_is_refused_in_one_line(tmp_path, name):
    cfg = load_config("local", tmp_path / name, environ={})
    with pytest.raises(ConfigError) as err:
        check_paths(cfg)
    assert "BUNDLECAST_HOME" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_a_home_with_spaces_works(tmp_path):
    done = _start(tmp_path / "state with spaces")
    assert done.returncode == 0 and "rows 1" in done.stdout, done.stderr[-3000:]


@pytest.mark.slow
def test_a_second_driver_on_a_busy_home_says_why_in_one_line(spark, world_home):
    """The test session holds the embedded (Derby) metastore of ``world_home``."""
    done = _start(world_home)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("bundlecast: error:")]
    assert len(errors) == 1 and "in use by another Spark driver" in errors[0], done.stderr[-3000:]
