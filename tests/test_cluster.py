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
