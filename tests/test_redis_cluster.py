"""Limits and history shared through a real Redis Cluster (issue 16).

Each test starts three cluster nodes (``redis-server --cluster-enabled yes``)
in a temporary directory and joins them with ``redis-cli --cluster create``.
The single-server tests of ``test_redis_state`` run here unchanged against
the cluster's ``redis+cluster://`` URL: the store they speak of is the node
serving the execgate keys' slot (``RedisCluster.command`` talks to it,
``RedisCluster.stop`` kills it while the other nodes keep running).
"""

from __future__ import annotations

import pathlib
import signal
import time
from collections.abc import Iterator

import pytest

import execgate
from redis_server import RedisCluster, redis_binary
from test_redis_state import POLICY, _init
from test_redis_state import key as key  # the fixture
from test_redis_state import (
    test_a_retried_call_does_not_take_twice as retried_call,
)
from test_redis_state import (
    test_a_store_that_lost_its_data_denies_until_rebuilt_from_the_logs as lost_and_rebuilt,
)
from test_redis_state import (
    test_redis_stopped_mid_run_denies_every_call_with_limits as stopped_mid_run,
)
from test_redis_state import (
    test_workers_racing_get_exactly_the_budget_and_the_rate_every_round as racing,
)


@pytest.fixture
def cluster(tmp_path: pathlib.Path) -> Iterator[RedisCluster]:
    store = RedisCluster(tmp_path, redis_binary())
    try:
        store.start()
        yield store
    finally:
        store.close()


def test_workers_racing_on_a_cluster_get_exactly_the_budget_and_the_rate(
    cluster: RedisCluster, key: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    racing(cluster, key, tmp_path)


def test_a_retried_call_does_not_take_twice_on_a_cluster(
    cluster: RedisCluster, key: pathlib.Path
) -> None:
    retried_call(cluster, key)


def test_the_node_serving_the_slot_killed_mid_run_denies_every_call_with_limits(
    cluster: RedisCluster, key: pathlib.Path
) -> None:
    owner = cluster.owner()
    stopped_mid_run(cluster, key)
    assert not owner.running and all(n.running for n in cluster.nodes if n is not owner)
    # The other nodes answer (the cluster is up for their slots) but nobody
    # serves the state's slot: still a deny naming the store.
    gate = execgate.Gate(POLICY, key=key, state=cluster.url)
    d = gate.check("spend", {"limit": 9, "cost": 1})
    assert not d.allowed and d.error == "state" and cluster.url in d.reasons[0], d.reasons


def test_a_hung_node_serving_the_slot_denies_within_the_bound(
    cluster: RedisCluster, key: pathlib.Path
) -> None:
    """A node that accepts connections and never answers: each call that
    needs it is denied within one connect timeout and one reply timeout
    (1.2 s here), however many retries, reconnects and slot-map refreshes
    the cluster client attempts (without the bound: about 8 s per call)."""
    _init(cluster.url, key)
    spend = {"limit": 1e9, "cost": 1}
    gate = execgate.Gate(POLICY, key=key, state=cluster.url, state_timeout=0.2)
    assert gate.check("spend", spend).allowed
    owner = cluster.owner()
    owner.signal(signal.SIGSTOP)
    try:
        for g in (gate, gate, execgate.Gate(POLICY, key=key, state=cluster.url, state_timeout=0.2)):
            began = time.monotonic()
            d = g.check("spend", spend)
            took = time.monotonic() - began
            assert not d.allowed and d.error == "state" and cluster.url in d.reasons[0], d.reasons
            assert "no reply within 200ms" in d.reasons[0], d.reasons
            assert took < 4, took  # 1.2 s, with room for a loaded machine
    finally:
        owner.signal(signal.SIGCONT)
    assert gate.check("spend", spend).allowed  # back as soon as the node answers


def test_another_node_down_matters_only_once_the_cluster_fails(
    cluster: RedisCluster, key: pathlib.Path
) -> None:
    _init(cluster.url, key)
    owner = cluster.owner()
    other = next(n for n in cluster.nodes if n is not owner)
    other.stop()
    spend = {"limit": 1e9, "cost": 1}
    assert execgate.Gate(POLICY, key=key, state=cluster.url).check("spend", spend).allowed
    gate = execgate.Gate(POLICY, key=key, state=cluster.url)
    assert gate.check("spend", spend).allowed
    # Once the others mark it failed (cluster-node-timeout), the cluster
    # refuses every command (full coverage is required): a deny.
    deadline = time.monotonic() + 60
    while owner.command("CLUSTER", "INFO") != "cluster_state:fail":
        assert time.monotonic() < deadline, "the cluster did not notice"
        time.sleep(0.1)
    d = gate.check("spend", spend)
    assert not d.allowed and d.error == "state" and "ClusterDown" in d.reasons[0], d.reasons
    assert cluster.url in d.reasons[0]
    assert gate.check("free").allowed


def test_a_cluster_that_lost_its_data_denies_until_rebuilt_from_the_logs(
    cluster: RedisCluster, key: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    lost_and_rebuilt(cluster, key, tmp_path)


def test_the_slot_moving_to_another_node_is_followed_with_its_counts(
    cluster: RedisCluster, key: pathlib.Path
) -> None:
    """A resharding while a gate holds connections: denied while the slot
    migrates, MOVED followed once it moved; the budget stays exact."""
    _init(cluster.url, key)
    gate = execgate.Gate(POLICY, key=key, state=cluster.url)
    spend = {"limit": 3, "cost": 1}
    with execgate.principal("p"):
        assert gate.check("spend", spend).allowed  # 1 of 3, on the first owner
        source = cluster.owner()
        target = next(n for n in cluster.nodes if n is not source)
        slot = str(cluster.slot())
        src_id, dst_id = cluster.node_id(source), cluster.node_id(target)
        assert cluster.cli(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", src_id).strip() == "OK"
        assert cluster.cli(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id).strip() == "OK"
        keys = cluster.cli(source, "CLUSTER", "GETKEYSINSLOT", slot, "1000").split()
        assert "{execgate}:marker" in keys
        migrate = ["MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000", "KEYS", *keys]
        assert cluster.cli(source, *migrate).strip() == "OK"
        # Migrating: the source answers ASK, and the target TRYAGAIN (not all
        # of the script's keys are there: the call's id is new), until the
        # retries are spent: a deny, nothing taken.
        d = gate.check("spend", spend)
        assert not d.allowed and d.error == "state" and cluster.url in d.reasons[0], d.reasons
        assert "Ask" in d.reasons[0] or "TRYAGAIN" in d.reasons[0], d.reasons
        for node in cluster.nodes:
            cluster.cli(node, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        assert cluster.owner() is target
        # Moved: the gate's map still says source, which answers MOVED.
        assert gate.check("spend", spend).allowed  # 2 of 3
        assert gate.check("spend", spend).allowed  # 3 of 3
        d = gate.check("spend", spend)
        assert not d.allowed and "has spent 3 of 3" in d.reasons[0], d.reasons
    assert target.command("GET", "{execgate}:b:spend:p") == "3000000"


def test_cluster_urls_are_checked(key: pathlib.Path) -> None:
    for url, why in [
        ("redis+cluster:///", "seed nodes"),
        ("redis+cluster://127.0.0.1:7000/3", "database 0 only"),
        ("rediss+cluster://127.0.0.1:7000/#insecure", "no insecure mode"),
        ("redis+cluster://127.0.0.1:7000/?ssl_ca_certs=/dev/null", "need TLS"),
    ]:
        with pytest.raises(execgate.ConfigurationError, match=why):
            execgate.Gate(POLICY, key=key, state=url)
    # A cluster nobody answers for does not stop a gate from starting; it denies.
    gate = execgate.Gate(POLICY, key=key, state="redis+cluster://127.0.0.1:1,127.0.0.1:2/")
    d = gate.check("spend", {"limit": 1, "cost": 1})
    assert d.error == "state" and "redis+cluster://127.0.0.1:1,127.0.0.1:2/" in d.reasons[0]
    assert gate.check("free").allowed
