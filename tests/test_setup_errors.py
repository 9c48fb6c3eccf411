"""Set-up failures reach the operator as one line (odd paths); several drivers share one home."""
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
         "    t.upsert('sites', t.frame('sites', [dict(site_id=sys.argv[1], name='n', country='FR', currency='EUR', "
         "timezone='UTC', dt='2026-11-20', _source_file='f')]))\n"
         "    print('rows', t.read('sites').count())\n"
         "sys.exit(run_main(body))\n")


def _env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYSPARK_GATEWAY"))}
    env.update(BUNDLECAST_HOME=str(home), BUNDLECAST_SPARK_MASTER="local[1]")
    return env


def _start(home: Path, site: str = "s") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", START, site], env=_env(home), capture_output=True, text=True,
                          timeout=600)


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
def test_drivers_share_a_home_and_concurrent_commits_both_land(spark, world_home, tmp_path):
    """The session catalog needs no metastore: a driver starts on a home another driver
    (this test session's) is using, and two drivers upserting into one table at the same
    time both land (a commit that meets the other one is retried)."""
    home = tmp_path / "shared"
    assert _start(home, "first").returncode == 0  # the table exists: the next two race on its commits
    racers = [subprocess.Popen([sys.executable, "-c", START, site], env=_env(home), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for site in ("a", "b")]
    outs = [(p.wait(timeout=600), *p.communicate()) for p in racers]
    assert [code for code, _, _ in outs] == [0, 0], [err[-2000:] for _, _, err in outs]
    seen = sorted(out.strip().splitlines()[-1] for _, out, _ in outs)
    assert seen[-1] == "rows 3", seen  # whichever committed last saw all three sites
    busy = _start(world_home)  # world_home is held by the test session's driver
    assert busy.returncode == 0, busy.stderr[-2000:]
