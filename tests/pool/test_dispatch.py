"""Fair dispatch across customers (stride scheduling), with small numbers."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from onboarding.services import customer_create
from pool.clusters import cluster_pause, customer_move, customer_set_weight
from pool.dispatch import FairDispatcher
from pool.models import ClusterHeartbeat, PoolHost, Session, State, WorkerCluster
from pool.worker import session_claim


def ready(customer, n: int, *, ago_s: float, prefix: str = "s") -> list[int]:
    now = timezone.now()
    Session.objects.bulk_create(
        [
            Session(
                customer=customer,
                external_id=f"{prefix}-{i}",
                state=State.READY,
                ready_at=now - timedelta(seconds=ago_s) + timedelta(milliseconds=i),
            )
            for i in range(n)
        ]
    )
    return list(Session.objects.filter(customer=customer).values_list("id", flat=True))


def queued_by_customer() -> Counter:
    return Counter(
        Session.objects.filter(state=State.QUEUED).values_list("customer__slug", flat=True)
    )


def drain(dispatcher: FairDispatcher, cluster, *, rounds: int, n: int) -> None:
    """Dispatch n at a time and 'process' what was queued, like a cluster would."""
    for _ in range(rounds):
        dispatcher.dispatch_cluster(cluster=cluster, n=n, now=timezone.now())
        Session.objects.filter(state=State.QUEUED).update(state=State.PROCESSED)


@pytest.fixture
def big_and_small(db):
    big = customer_create(name="Big")[0]
    small = customer_create(name="Small")[0]
    return big, small


def test_a_small_customers_session_jumps_a_big_backlog(big_and_small):
    big, small = big_and_small
    ready(big, 200, ago_s=600, prefix="big")
    ready(small, 1, ago_s=1, prefix="small")
    FairDispatcher().dispatch_cluster(cluster=big.cluster, n=4, now=timezone.now())
    # The small session is newer than all 200, yet it goes out in the first batch.
    assert queued_by_customer() == Counter({"big": 3, "small": 1})


def test_work_conserving_fills_every_slot_from_whoever_has_work(big_and_small):
    big, _ = big_and_small
    ready(big, 50, ago_s=60)
    sent = FairDispatcher().dispatch_cluster(cluster=big.cluster, n=8, now=timezone.now())
    assert sent == 8 and queued_by_customer() == Counter({"big": 8})


def test_oldest_first_within_a_customer(big_and_small):
    big, _ = big_and_small
    ids = ready(big, 10, ago_s=60)
    FairDispatcher().dispatch_cluster(cluster=big.cluster, n=3, now=timezone.now())
    queued = set(Session.objects.filter(state=State.QUEUED).values_list("id", flat=True))
    assert queued == set(sorted(ids)[:3])


def test_weights_change_the_shares(big_and_small):
    big, small = big_and_small
    customer_set_weight(customer=big, weight=3)
    ready(big, 300, ago_s=60, prefix="big")
    ready(small, 300, ago_s=60, prefix="small")
    dispatcher = FairDispatcher()
    drain(dispatcher, big.cluster, rounds=20, n=8)
    assert dispatcher.dispatched[big.id] == 120 and dispatcher.dispatched[small.id] == 40


def test_a_returning_customer_gets_no_burst_credit(big_and_small):
    big, small = big_and_small
    ready(big, 400, ago_s=60, prefix="big")
    dispatcher = FairDispatcher()
    drain(dispatcher, big.cluster, rounds=20, n=10)  # big alone for a while
    ready(small, 100, ago_s=1, prefix="small")
    dispatcher.dispatch_cluster(cluster=big.cluster, n=10, now=timezone.now())
    # Equal weights: the newcomer shares slots evenly rather than taking all ten.
    assert queued_by_customer() == Counter({"big": 5, "small": 5})


def test_a_cluster_move_reroutes_the_ready_backlog(big_and_small):
    big, small = big_and_small
    ready(small, 5, ago_s=30, prefix="small")
    dedicated = WorkerCluster.objects.create(name="dedicated", desired_workers=1)
    customer_move(customer=small, cluster=dedicated)
    dispatcher = FairDispatcher()
    assert dispatcher.dispatch_cluster(cluster=big.cluster, n=10, now=timezone.now()) == 0
    assert dispatcher.dispatch_cluster(cluster=dedicated, n=10, now=timezone.now()) == 5
    assert set(Session.objects.values_list("dispatched_cluster__name", flat=True)) == {"dedicated"}


def test_dispatch_keeps_the_queue_shallow_and_skips_paused_clusters(big_and_small):
    big, _ = big_and_small
    ready(big, 100, ago_s=60)
    host = PoolHost.objects.create(name="h1")
    ClusterHeartbeat.objects.create(
        host=host, cluster=big.cluster, live_workers=3, applied_workers=3
    )
    dispatcher = FairDispatcher()
    assert dispatcher.dispatch(now=timezone.now()) == 6  # 2 x live workers
    assert dispatcher.dispatch(now=timezone.now()) == 0  # already full
    Session.objects.filter(state=State.QUEUED).update(state=State.PROCESSED)
    cluster_pause(cluster=big.cluster, paused=True)
    assert dispatcher.dispatch(now=timezone.now()) == 0


def test_a_session_is_claimed_by_one_worker_only(big_and_small):
    big, _ = big_and_small
    (sid,) = ready(big, 1, ago_s=5)
    FairDispatcher().dispatch_cluster(cluster=big.cluster, n=1, now=timezone.now())
    assert session_claim(session_id=sid, host="a") is not None
    assert session_claim(session_id=sid, host="b") is None
