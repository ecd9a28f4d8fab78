"""`python manage.py bench_dashboard`: does the overview's cost follow sessions or customers?

Steps, all inside one transaction that is rolled back at the end (nothing is left behind):
1. create 200 customers, a pool host heartbeat and an hour of lag samples per customer
   (--lag-hours 26: as many as runpool keeps);
2. create two copies of the session table in schemas of their own (LIKE pool_session
   INCLUDING ALL: same columns, constraints and indexes); `SET search_path` picks which
   one the app's unqualified `pool_session` means, so the page can switch between them;
3. fill the small copy with `INSERT … SELECT … FROM generate_series`: open sessions being
   recorded, a backlog of a few thousand (one large customer 50 minutes behind, the others
   a few minutes), the last ten minutes of processed sessions and older history, 10,000 in
   all; copy it into the large one and add older history (processed, 1 in 2,000 failed) up
   to 1,000,000: the live state is identical, only the stored history differs;
4. ANALYZE, then render the overview as a logged-in user through Django's test Client,
   alternating between the two copies in rounds (this machine's load drifts; alternating
   spreads the drift over both), warm-up renders after each switch not counted; wall
   time per render, and CPU time (this process plus, when local, the PostgreSQL backend)
   which other load hardly moves;
5. print both medians and their ratio (target ≤ 1.5), the time of every query of a render
   with each copy and, when the ratio is over target (or with --explain), EXPLAIN ANALYZE
   of the queries that grew most, with either copy.

The bench's sessions shadow the database's own ones while it runs (customers are shared).
With --database-url the same runs in a scratch PostgreSQL database (created and migrated
when missing) instead of the configured one.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, transaction
from django.test import Client
from django.test.utils import override_settings
from django.utils import timezone

from onboarding.models import Customer
from pool.bench import CpuClock, median, timed, unapplied_migrations
from pool.models import ClusterHeartbeat, LagSample, PoolHost, Session, WorkerCluster

TARGET_RATIO = 1.5
WORDS_A = "Acme Blue Cedar Delta Ember Falcon Granite Harbor Iris Juniper Kestrel Lumen Maple Nova Orbit Pine Quartz River Summit Tidal".split()  # fmt: skip
WORDS_B = "Retail Health Travel Media Bank Games Foods Labs Motors Insurance".split()
SESSION_COLUMNS = (
    "customer_id, external_id, state, created_at, last_payload_at, payload_count, "
    "bytes_received, ready_at, queued_at, claim_token, claimed_at, lease_until, worker_host, "
    "attempts, last_error, processed_at, processing_ms, length_ms, active_ms, click_count, "
    "rage_click_count, error_count, event_total, landing_page, exit_page, out_of_order, "
    "excluded_reason, summary, stream_bytes, dispatched_cluster_id"
)
# (ready_at, processed_at) from the row's anchor time t: processed sessions end at t,
# backlog and failed ones became ready at t, open ones are still being recorded at t.
KINDS = {
    "processed": ("x.t - x.jitter * interval '30 seconds'", "x.t"),
    "backlog": ("x.t", "NULL::timestamptz"),
    "failed": ("x.t", "NULL::timestamptz"),
    "open": ("NULL::timestamptz", "NULL::timestamptz"),
}
INSERT_SESSIONS = """
INSERT INTO pool_session ({columns})
SELECT y.customer_id, %(prefix)s || y.g, y.state,
       y.last_at - y.length_ms * interval '1 millisecond', y.last_at, 1 + (y.jitter * 9)::int,
       (20000 + y.jitter * 400000)::bigint,
       y.ready_at,
       CASE WHEN y.state IN ('queued', 'processing', 'processed') THEN y.ready_at + interval '1 second' END,
       CASE WHEN y.state = 'processing' THEN md5(y.g::text) ELSE '' END,
       CASE WHEN y.state IN ('processing', 'processed') THEN y.ready_at + interval '2 seconds' END,
       CASE WHEN y.state = 'processing' THEN %(now)s + interval '2 minutes' END,
       CASE WHEN y.state IN ('processing', 'processed') THEN 'pool-' || (y.g %% 3) ELSE '' END,
       CASE WHEN y.state IN ('processing', 'processed') THEN 1 WHEN y.state = 'failed' THEN 5 ELSE 0 END,
       CASE WHEN y.state = 'failed' THEN 'ValueError: payload 3 is not valid rrweb' ELSE '' END,
       y.processed_at,
       CASE WHEN y.processed_at IS NOT NULL THEN 20 + y.jitter * 180 END,
       CASE WHEN y.processed_at IS NOT NULL THEN y.length_ms END,
       CASE WHEN y.processed_at IS NOT NULL THEN (y.length_ms * (0.3 + y.jitter / 2))::bigint END,
       CASE WHEN y.processed_at IS NOT NULL THEN (y.jitter * 40)::int END,
       CASE WHEN y.processed_at IS NOT NULL THEN (y.g %% 40 = 0)::int END,
       CASE WHEN y.processed_at IS NOT NULL THEN (y.g %% 7 = 0)::int END,
       CASE WHEN y.processed_at IS NOT NULL THEN (200 + y.jitter * 5000)::int END,
       CASE WHEN y.processed_at IS NOT NULL THEN 'https://shop.example/p/' || (y.g %% 500) ELSE '' END,
       CASE WHEN y.processed_at IS NOT NULL THEN 'https://shop.example/checkout' ELSE '' END,
       false, '', '{{}}'::jsonb,
       CASE WHEN y.processed_at IS NOT NULL THEN (y.length_ms / 20)::bigint END,
       CASE WHEN y.state IN ('queued', 'processing', 'processed') THEN %(cluster)s::bigint END
FROM (
    SELECT x.*, {ready} AS ready_at, {processed} AS processed_at,
           coalesce({ready}, x.t) AS last_at, (30000 + x.jitter * 900000)::bigint AS length_ms
    FROM (
        -- random() in this target list keeps the subquery from being flattened: one draw per row
        SELECT g,
               (%(ids)s::bigint[])[1 + floor(power(random(), %(skew)s) * %(n_ids)s)::int] AS customer_id,
               %(state)s::varchar AS state,
               %(newest)s::timestamptz - random() * %(span)s::interval AS t,
               random() AS jitter
        FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g
    ) x
) y
"""
INSERT_LAG_SAMPLES = """
INSERT INTO pool_lagsample (customer_id, at, resolution_s, backlog, lag_s, processed_per_min, arrivals_per_min)
SELECT c.id, %(newest)s::timestamptz - k * interval '15 seconds', 15,
       (random() * 40)::int, random() * 90, 5 + random() * 20, 5 + random() * 20
FROM unnest(%(ids)s::bigint[]) AS c(id) CROSS JOIN generate_series(0, %(last)s) AS k
"""


@dataclass
class Run:
    sessions: int
    schema: str
    page_s: list[float] = field(default_factory=list)
    fragment_s: list[float] = field(default_factory=list)
    cpu_s: float = 0.0  # CPU of the measured page renders: app + database backend
    queries: list[tuple[str, float]] = field(default_factory=list)  # (sql, median s), in order

    @property
    def page(self) -> float:
        return median(self.page_s)

    @property
    def fragment(self) -> float:
        return median(self.fragment_s)

    @property
    def cpu(self) -> float:
        return self.cpu_s / len(self.page_s)


class Command(BaseCommand):
    help = (
        "Render the lag overview with 200 customers over 10,000 and over 1,000,000 stored "
        "sessions (PostgreSQL) and print the render time ratio (target ≤ 1.5). Rolled back."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--customers", type=int, default=200)
        parser.add_argument("--small", type=int, default=10_000, help="sessions, first run")
        parser.add_argument("--sessions", type=int, default=1_000_000, help="sessions, second run")
        parser.add_argument("--backlog", type=int, default=3_000, help="ready/queued/processing")
        parser.add_argument("--renders", type=int, default=15, help="measured renders per run")
        parser.add_argument("--rounds", type=int, default=5, help="switches between the runs")
        parser.add_argument(
            "--lag-hours",
            type=int,
            default=1,
            help="hours of 15-second lag samples per customer (runpool keeps 26)",
        )
        parser.add_argument("--explain", action="store_true", help="EXPLAIN ANALYZE always")
        parser.add_argument(
            "--database-url",
            help="run in this scratch PostgreSQL database (created and migrated if missing)",
        )

    def handle(self, *args, **options) -> None:
        if options["database_url"]:
            return self.run_in_scratch_database(options)
        if connection.vendor != "postgresql":
            raise CommandError(
                "bench_dashboard needs PostgreSQL (it loads a million rows with generate_series "
                "and compares query plans): set DATABASE_URL=postgres://… or pass "
                "--database-url postgres://…/scratch"
            )
        if missing := unapplied_migrations():
            raise CommandError(f"the database lacks migrations {', '.join(missing)}: run migrate")
        live = options["backlog"] + 2_500  # backlog + open + recently processed
        if not live < options["small"] < options["sessions"]:
            raise CommandError(f"need {live} < --small < --sessions")
        if options["renders"] < options["rounds"] or options["rounds"] < 1:
            raise CommandError("need 1 ≤ --rounds ≤ --renders")
        self.tag = secrets.token_hex(3)
        self.now = timezone.now()
        self.next_g = 1
        with transaction.atomic():
            self.note_existing_rows()
            small, large = self.load(options)
            self.measure([small, large], renders=options["renders"], rounds=options["rounds"])
            ratio = large.page / small.page
            explains = []
            if ratio > TARGET_RATIO or options["explain"]:
                # EXPLAIN needs the data: before the rollback.
                explains = [
                    (i, sql, self.explain(sql, small), self.explain(sql, large))
                    for _, i, sql in self.growers(small, large)
                ]
            transaction.set_rollback(True)
        self.report(small, large, ratio, explains)
        self.stdout.write("rolled back: nothing kept")

    # --- data --------------------------------------------------------------------
    def note_existing_rows(self) -> None:
        customers, sessions = Customer.objects.count(), Session.objects.count()
        if customers or sessions:
            self.stdout.write(
                f"note: this database holds {customers:,} customers and {sessions:,} sessions; "
                "the bench's sessions shadow its own while it runs, its customers are listed "
                "too (use --database-url for a clean scratch run)"
            )

    def load(self, options: dict) -> tuple[Run, Run]:
        customers = self.create_customers(options["customers"], lag_hours=options["lag_hours"])
        ids = [c.id for c in customers]
        small = Run(options["small"], f"bench_{self.tag}_small")
        large = Run(options["sessions"], f"bench_{self.tag}_large")
        with connection.cursor() as cursor:
            for run in (small, large):
                cursor.execute(f"CREATE SCHEMA {run.schema}")
                cursor.execute(
                    f"CREATE TABLE {run.schema}.pool_session "
                    "(LIKE public.pool_session INCLUDING ALL)"
                )
        self.use(small)
        self.create_live_state(ids, backlog=options["backlog"])
        self.add_history(ids, options["small"] - Session.objects.count(), span=timedelta(days=7))
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {large.schema}.pool_session SELECT * FROM {small.schema}.pool_session"
            )
            cursor.execute(
                "SELECT setval(pg_get_serial_sequence(%s, 'id'), max(id)) FROM "
                f"{large.schema}.pool_session",
                [f"{large.schema}.pool_session"],
            )
        self.use(large)
        self.add_history(ids, options["sessions"] - options["small"], span=timedelta(days=60))
        with connection.cursor() as cursor:
            cursor.execute(
                f"ANALYZE {small.schema}.pool_session, {large.schema}.pool_session, "
                "pool_lagsample, onboarding_customer, pool_clusterheartbeat"
            )
        for run in (small, large):
            self.use(run)
            self.stdout.write(f"{run.schema}.pool_session: {Session.objects.count():,} sessions")
        return small, large

    def use(self, run: Run) -> None:
        """From now on the app's `pool_session` is this run's copy (until the rollback)."""
        with connection.cursor() as cursor:
            cursor.execute(f"SET search_path TO {run.schema}, public")

    def create_customers(self, n: int, *, lag_hours: int) -> list[Customer]:
        shared, _ = WorkerCluster.objects.get_or_create(name="shared")
        self.cluster_id = shared.id
        names = [f"{a} {b}" for b in WORDS_B for a in WORDS_A]
        customers = Customer.objects.bulk_create(
            Customer(
                name=f"{names[i % len(names)]}{f' {i // len(names) + 1}' if i >= len(names) else ''}"
                f" [{self.tag}]",
                slug=f"bench-{self.tag}-{i:04d}",
                large=i < 3,
                cluster=shared,
                weight=4 if i < 3 else 1,
            )
            for i in range(n)
        )
        host = PoolHost.objects.create(
            name=f"bench-dashboard-{self.tag}", pid=os.getpid(), cpu_count=os.cpu_count() or 1
        )
        ClusterHeartbeat.objects.create(
            host=host, cluster=shared, applied_workers=8, live_workers=8, busy_workers=7
        )
        newest = datetime.fromtimestamp(
            int(self.now.timestamp()) // LagSample.RAW * LagSample.RAW, tz=self.now.tzinfo
        )
        with connection.cursor() as cursor:
            cursor.execute("SELECT setseed(0.42)")
            cursor.execute(
                INSERT_LAG_SAMPLES,
                {"newest": newest, "ids": [c.id for c in customers], "last": 240 * lag_hours - 1},
            )
        return customers

    def create_live_state(self, ids: list[int], *, backlog: int) -> None:
        """What the dashboard is about: identical in both runs."""
        big, rest = ids[:1], ids[1:]
        behind = backlog * 2 // 3  # one large customer 50 minutes behind (CRITICAL)
        others = backlog - behind
        ready, queued = others * 8 // 10, others // 10
        self.insert("backlog", behind, big, state="ready", span=timedelta(minutes=50))
        self.insert("backlog", ready, rest, state="ready", span=timedelta(minutes=4))
        self.insert("backlog", queued, rest, state="queued", span=timedelta(seconds=30))
        processing = others - ready - queued
        self.insert("backlog", processing, rest, state="processing", span=timedelta(seconds=20))
        self.insert("open", 1_000, ids, state="open", span=timedelta(seconds=30))
        # ~150 sessions/min over the last ten minutes.
        self.insert("processed", 1_500, ids, state="processed", span=timedelta(minutes=10))

    def add_history(self, ids: list[int], n: int, *, span: timedelta) -> None:
        """Older sessions only: processed (and 1 in 2,000 failed) before the last 10 minutes."""
        self.stdout.write(f"loading {n:,} older sessions…")
        failed = n // 2_000
        newest = self.now - timedelta(minutes=10)
        self.insert("failed", failed, ids, state="failed", span=span, newest=newest)
        self.insert("processed", n - failed, ids, state="processed", span=span, newest=newest)

    def insert(
        self,
        kind: str,
        n: int,
        ids: list[int],
        *,
        state: str,
        span: timedelta,
        newest: datetime | None = None,
    ) -> None:
        if n <= 0:
            return
        ready, processed = KINDS[kind]
        sql = INSERT_SESSIONS.format(columns=SESSION_COLUMNS, ready=ready, processed=processed)
        params = {
            "prefix": f"bench-{self.tag}-{kind[0]}",
            "now": self.now,
            "cluster": self.cluster_id,
            "ids": ids,
            "n_ids": len(ids),
            "skew": 2.0,  # a few customers send most sessions
            "state": state,
            "newest": newest or self.now,
            "span": span,
            "first": self.next_g,
            "last": self.next_g + n - 1,
        }
        self.next_g += n
        with connection.cursor() as cursor:
            cursor.execute(sql, params)

    # --- measuring ---------------------------------------------------------------
    def measure(self, runs: list[Run], *, renders: int, rounds: int) -> None:
        user = User.objects.create_user(username=f"bench-{self.tag}")
        client = Client()
        client.force_login(user)

        def page() -> None:
            response = client.get("/", secure=True)
            if response.status_code != 200:
                raise CommandError(f"the overview answered {response.status_code}")

        def fragment() -> None:
            client.get("/", secure=True, headers={"HX-Request": "true"})

        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            self.cpu_clock = CpuClock(cursor.fetchone()[0])
        self.stdout.write(f"rendering {renders} times with each, in {rounds} rounds…")
        with override_settings(ALLOWED_HOSTS=[*settings.ALLOWED_HOSTS, "testserver"]):
            for r in range(rounds):
                n = renders // rounds + (1 if r < renders % rounds else 0)
                for run in runs if r % 2 == 0 else reversed(runs):
                    self.use(run)
                    timed(page, runs=0, warmup=2)
                    cpu_start = self.cpu_clock()
                    run.page_s += timed(page, runs=n, warmup=0)
                    run.cpu_s += self.cpu_clock() - cpu_start
                    run.fragment_s += timed(fragment, runs=n, warmup=1)
            for run in runs:
                self.use(run)
                run.queries = self.query_times(page)
        for run in runs:
            self.stdout.write(
                f"  {run.sessions:>9,} sessions: overview median {run.page * 1000:.1f} ms "
                f"(min {min(run.page_s) * 1000:.1f}, max {max(run.page_s) * 1000:.1f}), htmx "
                f"fragment {run.fragment * 1000:.1f} ms, CPU {run.cpu * 1000:.1f} ms per "
                f"render, {len(run.queries)} queries"
            )

    def query_times(self, page, repeat: int = 5) -> list[tuple[str, float]]:
        """Every query of a page render (with its parameters inlined, ready for EXPLAIN)
        and its median time over `repeat` renders."""
        renders: list[list[tuple[str, float]]] = []

        def timer(execute, sql, params, many, context):
            start = time.perf_counter()
            try:
                return execute(sql, params, many, context)
            finally:
                elapsed = time.perf_counter() - start
                full = connection.ops.last_executed_query(context["cursor"], sql, params)
                renders[-1].append((full, elapsed))

        for _ in range(repeat):
            renders.append([])
            with connection.execute_wrapper(timer):
                page()
        return [
            (sql, median([r[i][1] for r in renders if len(r) > i]))
            for i, (sql, _) in enumerate(renders[0])
        ]

    def explain(self, sql: str, run: Run) -> str:
        self.use(run)
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
            return "\n".join(row[0] for row in cursor.fetchall())

    # --- report ------------------------------------------------------------------
    def growers(self, small: Run, large: Run) -> list[tuple[float, int, str]]:
        """The (up to 3) queries whose time grew by more than 0.5 ms, the worst first."""
        growth = [
            (t_large - t_small, i, sql)
            for i, ((sql, t_small), (_, t_large)) in enumerate(
                zip(small.queries, large.queries, strict=False)
            )
        ]
        return [g for g in sorted(growth, reverse=True)[:3] if g[0] > 0.0005]

    def report(self, small: Run, large: Run, ratio: float, explains: list) -> None:
        self.stdout.write("")
        self.stdout.write("queries of one overview render (median ms over 5 renders):")
        self.stdout.write(f"  {'#':>2} {small.sessions:>9,} {large.sessions:>11,}  {'×':>6}  query")
        for i, ((sql, t_small), (_, t_large)) in enumerate(
            zip(small.queries, large.queries, strict=False)
        ):
            factor = t_large / t_small if t_small else float("inf")
            self.stdout.write(
                f"  {i:>2} {t_small * 1000:>9.2f} {t_large * 1000:>11.2f}  {factor:>6.1f}  "
                f"{' '.join(sql.split())[:110]}"
            )
        for i, sql, plan_small, plan_large in explains:
            self.stdout.write(f"\nquery #{i}:\n{sql}")
            self.stdout.write(f"-- with {small.sessions:,} sessions:\n{plan_small}")
            self.stdout.write(f"-- with {large.sessions:,} sessions:\n{plan_large}")
        if ratio > TARGET_RATIO and not explains:
            self.stdout.write("\nno single query grew by more than 0.5 ms")
        self.stdout.write("")
        self.stdout.write(
            f"overview median: {small.page * 1000:.1f} ms with {small.sessions:,} sessions, "
            f"{large.page * 1000:.1f} ms with {large.sessions:,} (fastest: "
            f"{min(small.page_s) * 1000:.1f} → {min(large.page_s) * 1000:.1f} ms); htmx "
            f"fragment {small.fragment * 1000:.1f} → {large.fragment * 1000:.1f} ms"
        )
        where = "app + PostgreSQL backend" if self.cpu_clock.backend else "app only"
        self.stdout.write(
            f"CPU per render ({where}, steadier than wall time on a busy machine): "
            f"{small.cpu * 1000:.1f} → {large.cpu * 1000:.1f} ms, ratio {large.cpu / small.cpu:.2f}"
        )
        self.stdout.write(
            f"render time ratio ({large.sessions:,} / {small.sessions:,} sessions): {ratio:.2f}"
            f" (target ≤ {TARGET_RATIO})"
        )

    # --- scratch database --------------------------------------------------------
    def run_in_scratch_database(self, options: dict) -> None:
        import dj_database_url
        import psycopg
        from psycopg import sql

        url = options["database_url"]
        db = dj_database_url.parse(url)
        if db["ENGINE"] != "django.db.backends.postgresql":
            raise CommandError("--database-url must be a postgres:// URL")
        admin = psycopg.connect(
            host=db["HOST"] or "127.0.0.1",
            port=db["PORT"] or 5432,
            user=db["USER"] or None,
            password=db["PASSWORD"] or None,
            dbname="postgres",
            autocommit=True,
        )
        with admin:
            exists = admin.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]]
            ).fetchone()
            if not exists:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db["NAME"])))
                self.stdout.write(f"created database {db['NAME']}")
        env = {**os.environ, "DATABASE_URL": url}
        manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
        subprocess.run([*manage, "migrate", "--noinput", "-v0"], env=env, check=True)
        argv = [
            f"--{name.replace('_', '-')}={options[name]}"
            for name in (
                "customers",
                "small",
                "sessions",
                "backlog",
                "renders",
                "rounds",
                "lag_hours",
            )
        ]
        argv += ["--explain"] if options["explain"] else []
        done = subprocess.run([*manage, "bench_dashboard", *argv], env=env)
        if done.returncode:
            raise CommandError(f"the bench failed in {db['NAME']} (exit {done.returncode})")
