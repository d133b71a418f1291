"""The Optuna example's multi-machine path: two worker processes fill one study on a real PostgreSQL server.

The test starts its own server (initdb into a temporary folder, pg_ctl on a free port on 127.0.0.1) and stops it
afterwards. It is skipped, saying why, where the server binaries or the driver are missing (.ci/run installs both:
Debian's ``postgresql`` package and ``psycopg2-binary`` through the ``optuna`` extra).
"""

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator, List

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("psycopg2", reason="PostgreSQL driver missing: pip install -e '.[optuna]' (psycopg2-binary)")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "optuna_search.py"
SERVER_USER = "postgres"  # the server refuses to run as root; Debian's package creates this user


def _server_bin_dir() -> Path:
    """Folder of initdb / pg_ctl: Debian keeps them under /usr/lib/postgresql/<version>/bin, off the PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda path: int(path.split("/")[4]))
    initdb = candidates[-1] if candidates else shutil.which("initdb")
    if initdb is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install -y postgresql")
    return Path(initdb).parent


def _as_server_user(command: List[str]) -> List[str]:
    if os.geteuid() != 0:
        return command
    if shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL as a non-root user")
    try:
        import pwd

        pwd.getpwnam(SERVER_USER)
    except KeyError:
        pytest.skip(f"running as root and no '{SERVER_USER}' user to run PostgreSQL as (apt-get install postgresql)")
    return ["runuser", "-u", SERVER_USER, "--", *command]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """URL of a fresh PostgreSQL server that lives for one test."""
    bin_dir = _server_bin_dir()
    # not under pytest's tmp_path: its parents are private to root, and the server user must reach its data folder
    root = Path(tempfile.mkdtemp(prefix="sb3_gmm_pg_"))
    data_dir, log_file = root / "data", root / "server.log"
    if os.geteuid() == 0:
        shutil.chown(root, user=SERVER_USER)
    port = _free_port()
    run = dict(check=True, capture_output=True, text=True, timeout=120)
    try:
        subprocess.run(
            _as_server_user([str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "gmm", "--auth=trust", "-E", "UTF8"]),
            **run,
        )
        options = f"-p {port} -k {data_dir} -c listen_addresses=127.0.0.1"
        subprocess.run(
            _as_server_user([str(bin_dir / "pg_ctl"), "start", "-w", "-D", str(data_dir), "-l", str(log_file),
                             "-o", options]),
            **run,
        )  # fmt: skip
    except subprocess.CalledProcessError as error:
        log = log_file.read_text() if log_file.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise AssertionError(f"PostgreSQL did not start: {error.stderr}\n{log}") from error
    try:
        yield f"postgresql+psycopg2://gmm@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_server_user([str(bin_dir / "pg_ctl"), "stop", "-m", "fast", "-D", str(data_dir)]),
                       capture_output=True, timeout=120)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_fill_one_study_on_postgresql(postgres_url, tmp_path):
    """Two example processes started together on one study URL on an empty database: both create-or-join the study
    (the first version lost the race for Optuna's tables with a unique-key violation) and their 2 trials land in it,
    numbered 0 and 1 by the database (trial numbers seed the runs, so duplicates would repeat a configuration)."""
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, str(EXAMPLE), "--storage", postgres_url, "--study-name", "shared",
               "--n-trials", "1", "--timesteps", "256"]  # fmt: skip
    workers = [
        subprocess.Popen(
            command, cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    for worker, (stdout, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-3000:]
        assert "best return" in stdout
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    assert len(optuna.get_all_study_summaries(storage=postgres_url)) == 1  # both workers joined one study
    complete = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(trial.number for trial in complete) == [0, 1]
    for trial in complete:
        assert set(trial.params) == {"n_components", "entropy_method", "ent_coef"}
    assert study.best_value == max(trial.value for trial in complete)
