"""geoseg.parallel: one meaning of --workers / --scheduler for every stage."""

from __future__ import annotations

import pytest

from geoseg.errors import ConfigError, InputError
from geoseg.parallel import Executor, is_distributed, no_workers_timeout


def _square(x: int) -> int:
    return x * x


def _fail(kind: str) -> None:
    raise InputError("bad.tif: unreadable") if kind == "geoseg" else ValueError("boom")


@pytest.mark.parametrize("workers", [0, 1])
def test_one_worker_and_legacy_zero_run_in_process(workers: int) -> None:
    assert not is_distributed(workers, None) and is_distributed(2, None) and is_distributed(1, "tcp://h:1")
    with Executor(workers) as ex:
        assert not ex.distributed and ex.n_workers == 1
        assert list(ex.map(_square, [("a", 2), ("b", 3)])) == [("a", 4), ("b", 9)]  # in order


def test_local_cluster_same_results_and_errors() -> None:
    with Executor(2, processes=False, what="square task") as ex:
        assert ex.distributed and ex.n_workers == 2
        assert sorted(ex.map(_square, [(i, i) for i in range(5)])) == [(i, i * i) for i in range(5)]
        with pytest.raises(InputError, match=r"bad\.tif: unreadable"):  # a GeosegError comes back unchanged
            list(ex.map(_fail, [(0, "geoseg")]))
        with pytest.raises(RuntimeError, match="square task failed: ValueError"):
            list(ex.map(_fail, [(0, "other")]))


def test_no_workers_timeout_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEOSEG_NO_WORKERS_TIMEOUT", raising=False)
    assert no_workers_timeout() == 30.0
    monkeypatch.setenv("GEOSEG_NO_WORKERS_TIMEOUT", "2.5")
    assert no_workers_timeout() == 2.5
    monkeypatch.setenv("GEOSEG_NO_WORKERS_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="GEOSEG_NO_WORKERS_TIMEOUT='soon'"):
        no_workers_timeout()


def test_predict_accepts_legacy_zero_workers_and_rejects_negative() -> None:
    from geoseg.predict.run import PredictConfig

    base = {"scenes": ("s.tif",), "model": "m", "out": "o"}
    assert PredictConfig(**base).workers == 1  # the default: in-process, as for tile
    PredictConfig(**base, workers=0).validate()  # the old spelling of in-process
    with pytest.raises(ConfigError, match="--workers must be an integer >= 1"):
        PredictConfig(**base, workers=-1).validate()
