"""Autoscale with a real runpool: workers go up under load and back down after.

Depends on runpool calling pool.autoscale.autoscale_tick (see pool.runner); the test says
so plainly if it does not.
"""

from __future__ import annotations

import time

import pytest

from onboarding.services import customer_create
from pool.autoscale import AUTOSCALE_BY, autoscale_update
from pool.benchmarks import SteadyArrivals, repeated_recording_body
from pool.clusters import cluster_resize
from pool.management.commands.bench_fairness import add_ready
from pool.models import (
    ClusterAutoscale,
    ClusterChange,
    ClusterSample,
    Session,
    State,
    WorkerCluster,
)
from tests.integration.conftest import wait_for, worker_processes

pytestmark = [pytest.mark.integration]

TARGET_LAG_S = 5
# Sessions cost 10x a recording (pool.benchmarks.repeated_recording_body): 3x one
# worker's rate is then a few dozen sessions/s, which this test can insert without itself
# taking the CPU the workers need (one worker drains hundreds of light sessions/s here).
REPEAT = 10


def one_worker_rate(customer, body: bytes, n: int = 600, skip: int = 100) -> float:
    """Sessions/s one worker finishes here, now (the machine is shared: measure it): n
    sessions drained from ready, timed by their processed_at once the first `skip` are
    done (the dispatcher's queue starts shallow and deepens)."""
    add_ready(customer, n, body, "calibrate")
    mine = Session.objects.filter(customer=customer)
    wait_for(
        lambda: not mine.exclude(state=State.PROCESSED).exists(),
        180,
        0.5,
        "calibration sessions to finish",
    )
    times = list(mine.order_by("processed_at").values_list("processed_at", flat=True))
    rate = (n - skip) / (times[-1] - times[skip]).total_seconds()
    mine.delete()
    return rate


def desired() -> int:
    return WorkerCluster.objects.get(name="shared").desired_workers


def test_autoscale_raises_workers_under_load_and_lowers_them_after(runpool):
    customer = customer_create(name="Acme Corp")[0]
    cluster = WorkerCluster.objects.get(name="shared")
    cluster_resize(cluster=cluster, workers=1)
    # The CPU cap is covered by unit tests; here other jobs share the machine's two
    # cores, and their load would (rightly) keep the autoscaler from adding workers.
    pool = runpool("it-autoscale", AUTOSCALE_CPU_CAP="0")
    wait_for(lambda: len(worker_processes(pool.pid)) == 1, 30, message="1 live worker")
    wait_for(
        lambda: ClusterSample.objects.filter(cluster=cluster).exists(),
        25,
        message="runpool to call pool.autoscale.autoscale_tick (the wiring in pool.runner)",
    )
    body = repeated_recording_body("checkout", times=REPEAT)
    rate = one_worker_rate(customer, body)
    assert rate > 0

    autoscale_update(
        cluster=cluster, enabled=True, min_workers=1, max_workers=3, target_lag_s=TARGET_LAG_S
    )
    feeder = SteadyArrivals(customer, [body], 3 * rate, every_s=0.25)
    feeder.start()
    try:
        try:
            wait_for(lambda: desired() >= 2, 90, 0.5, "the autoscaler to add workers")
        except AssertionError as exc:
            # "no CPU to spare" here means runpool ignored AUTOSCALE_CPU_CAP=0 (the
            # setting must be read from the environment in config.settings).
            decision = ClusterAutoscale.objects.get(pk=cluster.pk).last_decision
            raise AssertionError(f"{exc}; its last decision: {decision!r}") from None
        wait_for(lambda: len(worker_processes(pool.pid)) >= 2, 15, 0.2, "2+ live workers")
        time.sleep(5)
    finally:
        feeder.stop.set()
        feeder.join()

    # Traffic stopped: the backlog drains, then workers go back to the minimum.
    wait_for(lambda: desired() == 1, 240, 1, "workers back at the minimum")
    wait_for(lambda: len(worker_processes(pool.pid)) == 1, 15, 0.2, "1 live worker")
    wait_for(
        lambda: not Session.objects.exclude(state=State.PROCESSED).exists(),
        60,
        0.5,
        "all processed",
    )
    changes = ClusterChange.objects.filter(cluster=cluster, field="desired_workers").order_by("at")
    by_autoscaler = [c for c in changes if c.by_label == AUTOSCALE_BY]
    assert len(by_autoscaler) >= 2  # at least one up and one down
    assert int(by_autoscaler[0].after) > int(by_autoscaler[0].before)
    assert by_autoscaler[-1].after == "1"
    assert len(by_autoscaler) <= 5, [(c.before, c.after) for c in by_autoscaler]  # no flapping
    fed = Session.objects.filter(customer=customer)  # the calibration's were deleted
    assert fed.count() == feeder.sent
    assert not fed.exclude(state=State.PROCESSED).exists()
