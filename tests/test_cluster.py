import pytest

import dpipe
from dpipe.cluster import connect
from dpipe.errors import ClusterError


def test_workers_with_another_dpipe_version_are_refused(client, monkeypatch):
    address = client.scheduler.address
    with connect(address=address) as remote:  # the same version everywhere
        assert remote.scheduler.address == address
    monkeypatch.setattr(dpipe, "__version__", "0.0.1")  # the workers (other processes) keep theirs
    message = r"(?s)cluster.address: the workers of .* run dpipe \['.+'\]; this client runs 0.0.1.*Hint:"
    with pytest.raises(ClusterError, match=message), connect(address=address):
        pass


def test_planned_threads_are_the_clusters_the_run_will_start(monkeypatch):
    from dpipe.cluster import planned_threads
    from dpipe.spec import ClusterSpec

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert planned_threads(ClusterSpec(n_workers=2, threads_per_worker=3)) == 6
    assert planned_threads(ClusterSpec(n_workers=3)) == 6  # 8 cores // 3 workers = 2 threads each
    assert planned_threads(ClusterSpec(threads_per_worker=4)) == 8
    assert planned_threads(ClusterSpec()) == 8
    assert planned_threads(ClusterSpec(address="tcp://127.0.0.1:8786")) is None  # known once connected
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:8786")
    assert planned_threads(ClusterSpec()) is None


def test_workers_with_a_memory_limit_give_arrows_freed_memory_back(client):
    """pyarrow's own pool keeps freed memory, which a worker under a memory limit counts as
    unmanaged and pauses on for good; dpipe switches those workers to the system allocator."""
    from distributed import Client, LocalCluster

    from dpipe import arrow_pool, cluster

    with cluster.connect(client=client):
        assert set(arrow_pool.backends(client).values()) == {"system"}
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0", memory_limit=0) as lc,
        Client(lc, set_as_default=False) as unlimited,
        cluster.connect(client=unlimited),
    ):
        assert set(arrow_pool.backends(unlimited).values()) == {arrow_pool._backend()} != {"system"}
