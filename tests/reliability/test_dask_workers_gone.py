"""Every dask worker gone mid-run: a one-line error after the no-worker timeout, not a silent wait (issue 13).

A real ``dask scheduler`` and a ``dask worker --no-nanny`` process (so a killed worker is not restarted);
the timeout is lowered through ``GEOSEG_NO_WORKERS_TIMEOUT``.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from geoseg.errors import ClusterError
from geoseg.parallel import Executor
from geoseg.testing import write_random_model, write_scene, xy_image

pytestmark = pytest.mark.slow
DASK = str(Path(sys.executable).parent / "dask")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Cluster:
    def __init__(self, tmp: Path) -> None:
        self.addr = f"tcp://127.0.0.1:{_free_port()}"
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.scheduler = self._spawn([DASK, "scheduler", "--host", "127.0.0.1", "--port", self.addr.rsplit(":", 1)[1],
                                      "--no-dashboard"], "scheduler")  # fmt: skip
        self.worker = self.add_worker()

    def _spawn(self, cmd: list[str], name: str) -> subprocess.Popen[bytes]:
        with open(self.tmp / f"{name}-{len(self.procs)}.log", "wb") as log:  # (the child keeps its own copy)
            p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
        self.procs.append(p)
        return p

    def add_worker(self) -> subprocess.Popen[bytes]:
        from dask.distributed import Client

        p = self._spawn([DASK, "worker", self.addr, "--no-nanny", "--nthreads", "1", "--no-dashboard"], "worker")
        with Client(self.addr, timeout="30s") as c:
            c.wait_for_workers(1, timeout=60)  # (one worker alive at a time)
        return p

    def kill_worker(self) -> None:
        self.worker.send_signal(signal.SIGKILL)
        self.worker.wait(10)

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.kill()
                p.wait(10)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[_Cluster]:
    c = _Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


def test_executor_raises_one_line_when_every_worker_is_gone(cluster: _Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEOSEG_NO_WORKERS_TIMEOUT", "2")
    with Executor(scheduler=cluster.addr, what="sleep task", resumable=True) as ex:
        assert ex.distributed and ex.n_workers == 1
        threading.Timer(1.0, cluster.kill_worker).start()  # the task (a 60 s sleep) is running by then
        t0 = time.monotonic()
        with pytest.raises(ClusterError) as e:
            list(ex.map(time.sleep, [(0, 60.0)]))
        waited = time.monotonic() - t0
    msg = str(e.value)
    assert "\n" not in msg and f"--scheduler {cluster.addr}: no dask worker left" in msg, msg
    assert "restart the workers, then rerun with --resume" in msg
    assert 2.5 < waited < 20  # after the timeout (kill at 1 s + 2 s), long before the 60 s task


def test_predict_cli_exits_with_one_line_when_workers_die_then_resume_works(
    cluster: _Cluster, tmp_path: Path, geoseg_exe: str
) -> None:
    model = write_random_model(tmp_path / "run" / "model")
    scene = tmp_path / "scene.tif"
    grid = write_scene(scene, (xy_image(384, 384, 3, "uint16") % 200).astype("uint16"), date=dt.date(2024, 5, 6))
    b = grid.bounds
    out = tmp_path / "out"
    cmd = [geoseg_exe, "predict", str(scene), "-m", str(model), "--bbox", f"{b[0]},{b[1]},{b[2]},{b[3]},"
           f"{grid.crs.to_string()}", "--out", str(out), "--device", "cpu", "--no-progress", "--no-vectorize",
           "--scheduler", cluster.addr]  # fmt: skip
    env = {**os.environ, "GEOSEG_NO_WORKERS_TIMEOUT": "3"}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    state = out / ".geoseg-predict" / "state.json"
    deadline = time.monotonic() + 120
    while not state.exists():  # written after connecting, just before the tasks are submitted
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "predict never started its work folder"
        time.sleep(0.02)
    cluster.kill_worker()  # the worker is still importing torch / loading the model for the task
    t0 = time.monotonic()
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    assert f"--scheduler {cluster.addr}: no dask worker left for 3 s" in lines[0] and "--resume" in lines[0], err
    assert time.monotonic() - t0 < 60  # 3 s + polling + shutdown (a loaded 2-core machine: ~20 s)
    assert not (out / "probabilities.tif").exists() and state.exists()  # nothing final; resumable work kept

    resume = [*cmd[:-2], "--workers", "1", "--resume"]  # in-process: the work folder does not depend on the executor
    done = subprocess.run(resume, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert (out / "probabilities.tif").exists() and not (out / ".geoseg-predict").exists()
