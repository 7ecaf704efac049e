"""Fixtures of the fault tests: one private cluster (Redis + workers the test controls) per module."""
from __future__ import annotations

import pytest

from tests.reliability.cluster import Cluster, start_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, storage_env) -> Cluster:
    stack = start_cluster(tmp_path_factory.mktemp("cluster"), storage_env)
    yield stack
    stack.shut_down()


@pytest.fixture
def fresh(cluster) -> Cluster:
    """The module's cluster with no workers running and an empty Redis."""
    cluster.stop_workers()
    cluster.flush()
    yield cluster
    cluster.close_clients()
