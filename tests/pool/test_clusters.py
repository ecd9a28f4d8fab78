"""The clusters page: ops watch, admins resize, pause, create and move; all audited."""

from __future__ import annotations

import pytest

from onboarding.models import Customer
from onboarding.services import customer_create
from pool.models import ClusterChange, WorkerCluster

HTMX = {"HX-Request": "true"}


@pytest.fixture
def shared(db) -> WorkerCluster:
    customer_create(name="Acme Corp")  # creates the shared cluster with 2 workers
    return WorkerCluster.objects.get(name="shared")


@pytest.fixture
def ops_client(client, ops_user):
    client.force_login(ops_user)
    return client


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


@pytest.fixture(autouse=True)
def max_32_workers(settings):
    settings.POOL_MAX_WORKERS = 32


def changes_on(cluster: WorkerCluster) -> list[tuple[str, str, str, str]]:
    return [
        (c.actor, c.field, c.before, c.after)
        for c in ClusterChange.objects.filter(cluster=cluster).order_by("at", "pk")
    ]


# --- Who may see and change ------------------------------------------------------


def test_anonymous_users_are_sent_to_the_login_page(client, shared):
    for method, path in [
        ("get", "/clusters/"),
        ("post", "/clusters/shared/resize"),
        ("post", "/clusters/shared/pause"),
        ("post", "/clusters/new"),
        ("post", "/clusters/move"),
        ("post", "/clusters/weight"),
    ]:
        response = getattr(client, method)(path, {"workers": 3})
        assert response.status_code == 302, path
        assert response["Location"].startswith("/login/?next="), path
    assert WorkerCluster.objects.get(name="shared").desired_workers == 2


def test_ops_users_see_the_page_without_any_form_to_change_it(ops_client, shared):
    response = ops_client.get("/clusters/")
    assert response.status_code == 200
    body = response.content.decode()
    assert 'data-cluster="shared"' in body
    assert "workers-input" not in body
    assert "/clusters/shared/resize" not in body
    assert "/clusters/shared/pause" not in body
    assert "/clusters/new" not in body
    assert "/clusters/move" not in body
    assert "/clusters/weight" not in body


def test_ops_users_are_forbidden_to_change_anything(ops_client, shared):
    acme = Customer.objects.get(slug="acme-corp")
    WorkerCluster.objects.create(name="big", desired_workers=1)
    for path, data in [
        ("/clusters/shared/resize", {"workers": 3}),
        ("/clusters/shared/pause", {"paused": "1"}),
        ("/clusters/new", {"name": "rogue", "desired_workers": 4}),
        ("/clusters/move", {"customer": acme.slug, "cluster": "big"}),
        ("/clusters/weight", {"customer": acme.slug, "weight": 5}),
    ]:
        assert ops_client.post(path, data).status_code == 403, path
        assert ops_client.post(path, data, headers=HTMX).status_code == 403, path
    shared.refresh_from_db()
    acme.refresh_from_db()
    assert (shared.desired_workers, shared.paused) == (2, False)
    assert acme.cluster.name == "shared" and acme.weight == 1
    assert not WorkerCluster.objects.filter(name="rogue").exists()
    assert not ClusterChange.objects.exists()


def test_changes_need_a_post(admin_client, shared):
    assert admin_client.get("/clusters/shared/resize").status_code == 405
    assert admin_client.get("/clusters/shared/pause").status_code == 405


def test_admins_see_the_forms(admin_client, shared):
    body = admin_client.get("/clusters/").content.decode()
    assert 'class="workers-input"' in body and 'max="32"' in body
    assert 'action="/clusters/shared/resize"' in body
    assert 'action="/clusters/new"' in body and 'action="/clusters/move"' in body


# --- Resize ------------------------------------------------------------------------


def test_an_admin_resizes_a_cluster_and_the_change_is_audited(admin_client, shared):
    response = admin_client.post("/clusters/shared/resize", {"workers": 5}, follow=True)
    assert response.status_code == 200
    shared.refresh_from_db()
    assert shared.desired_workers == 5
    assert changes_on(shared) == [("adam-admin", "desired_workers", "2", "5")]
    body = response.content.decode()
    assert "shared: 5 workers per host." in body  # the flash message after the redirect
    assert "<td>adam-admin</td><td>shared</td><td>desired_workers</td><td>2</td><td>5</td>" in body


def test_a_resize_to_the_same_size_writes_no_audit_row(admin_client, shared):
    admin_client.post("/clusters/shared/resize", {"workers": 2})
    assert changes_on(shared) == []


@pytest.mark.parametrize("workers", ["1", "32"])
def test_the_bounds_are_accepted(admin_client, shared, workers):
    response = admin_client.post("/clusters/shared/resize", {"workers": workers})
    assert response.status_code == 302
    shared.refresh_from_db()
    assert shared.desired_workers == int(workers)


@pytest.mark.parametrize("workers", ["0", "33", "-1", "", "three", "2.5"])
def test_a_size_outside_1_to_pool_max_workers_is_rejected(admin_client, shared, workers):
    response = admin_client.post("/clusters/shared/resize", {"workers": workers})
    assert response.status_code == 400
    assert b'class="form-error"' in response.content
    shared.refresh_from_db()
    assert shared.desired_workers == 2
    assert changes_on(shared) == []


def test_the_upper_bound_follows_the_setting(admin_client, shared, settings):
    settings.POOL_MAX_WORKERS = 4
    assert admin_client.post("/clusters/shared/resize", {"workers": 5}).status_code == 400
    assert admin_client.post("/clusters/shared/resize", {"workers": 4}).status_code == 302
    assert 'max="4"' in admin_client.get("/clusters/").content.decode()


def test_resizing_an_unknown_cluster_is_a_404(admin_client, shared):
    assert admin_client.post("/clusters/nope/resize", {"workers": 3}).status_code == 404


def test_an_htmx_resize_returns_only_the_live_region(admin_client, shared):
    response = admin_client.post("/clusters/shared/resize", {"workers": 3}, headers=HTMX)
    assert response.status_code == 200
    body = response.content.decode()
    assert body.lstrip().startswith('<div id="live"')
    assert "<html" not in body and "<h1>" not in body
    assert '<b class="desired">3</b>' in body
    # No flash message is queued for the next full page: the fragment shows the change.
    assert "workers per host." not in admin_client.get("/clusters/").content.decode()


def test_an_htmx_resize_with_a_bad_size_returns_the_region_with_the_error(admin_client, shared):
    response = admin_client.post("/clusters/shared/resize", {"workers": 33}, headers=HTMX)
    assert response.status_code == 400
    body = response.content.decode()
    assert body.lstrip().startswith('<div id="live"') and "<html" not in body
    assert 'class="form-error"' in body


def test_the_page_polls_its_live_region(ops_client, shared):
    page = ops_client.get("/clusters/").content.decode()
    assert 'hx-trigger="every 2s' in page and "<html" in page
    fragment = ops_client.get("/clusters/", headers=HTMX).content.decode()
    assert fragment.lstrip().startswith('<div id="live"') and "<html" not in fragment
    assert 'data-cluster="shared"' in fragment


# --- Pause, create, move, weight ---------------------------------------------------


def test_an_admin_pauses_and_resumes_a_cluster(admin_client, shared):
    admin_client.post("/clusters/shared/pause", {"paused": "1"})
    shared.refresh_from_db()
    assert shared.paused
    body = admin_client.get("/clusters/").content.decode()
    assert "paused</span>" in body and ">Resume</button>" in body

    response = admin_client.post("/clusters/shared/pause", {"paused": "0"}, headers=HTMX)
    assert response.status_code == 200 and ">Pause</button>" in response.content.decode()
    shared.refresh_from_db()
    assert not shared.paused
    assert changes_on(shared) == [
        ("adam-admin", "paused", "False", "True"),
        ("adam-admin", "paused", "True", "False"),
    ]


def test_an_admin_creates_a_cluster(admin_client, shared):
    response = admin_client.post("/clusters/new", {"name": "big-one", "desired_workers": 6})
    assert response.status_code == 302
    cluster = WorkerCluster.objects.get(name="big-one")
    assert cluster.desired_workers == 6 and not cluster.paused
    assert changes_on(cluster) == [("adam-admin", "created", "", "6 workers")]
    assert 'data-cluster="big-one"' in admin_client.get("/clusters/").content.decode()


@pytest.mark.parametrize("name", ["shared", "Not a slug!", ""])
def test_a_cluster_needs_a_new_slug_for_a_name(admin_client, shared, name):
    response = admin_client.post("/clusters/new", {"name": name, "desired_workers": 2})
    assert response.status_code == 400
    assert WorkerCluster.objects.count() == 1
    assert not ClusterChange.objects.exists()


@pytest.mark.parametrize("workers", ["0", "33"])
def test_a_new_cluster_gets_a_size_within_the_same_bounds_as_a_resize(
    admin_client, shared, workers
):
    response = admin_client.post("/clusters/new", {"name": "odd", "desired_workers": workers})
    assert response.status_code == 400
    assert not WorkerCluster.objects.filter(name="odd").exists()


def test_an_admin_moves_a_customer_and_both_clusters_record_it(admin_client, shared):
    big = WorkerCluster.objects.create(name="big", desired_workers=1)
    response = admin_client.post("/clusters/move", {"customer": "acme-corp", "cluster": "big"})
    assert response.status_code == 302
    assert Customer.objects.get(slug="acme-corp").cluster == big
    move = ("adam-admin", "customer acme-corp", "shared", "big")
    assert changes_on(shared) == [move] and changes_on(big) == [move]
    body = admin_client.get("/clusters/").content.decode()
    assert "<td>customer acme-corp</td><td>shared</td><td>big</td>" in body


def test_moving_to_an_unknown_cluster_is_rejected(admin_client, shared):
    response = admin_client.post("/clusters/move", {"customer": "acme-corp", "cluster": "nope"})
    assert response.status_code == 400
    assert Customer.objects.get(slug="acme-corp").cluster == shared
    assert not ClusterChange.objects.exists()


def test_an_admin_sets_a_customers_weight(admin_client, shared):
    response = admin_client.post("/clusters/weight", {"customer": "acme-corp", "weight": 5})
    assert response.status_code == 302
    assert Customer.objects.get(slug="acme-corp").weight == 5
    assert changes_on(shared) == [("adam-admin", "weight acme-corp", "1", "5")]
    assert "(now 5)" in admin_client.get("/clusters/").content.decode()


@pytest.mark.parametrize("weight", ["0", "1001", "x"])
def test_a_weight_out_of_range_is_rejected(admin_client, shared, weight):
    response = admin_client.post("/clusters/weight", {"customer": "acme-corp", "weight": weight})
    assert response.status_code == 400
    assert Customer.objects.get(slug="acme-corp").weight == 1


def test_the_changes_table_lists_the_latest_first(admin_client, shared):
    admin_client.post("/clusters/shared/resize", {"workers": 3})
    admin_client.post("/clusters/shared/resize", {"workers": 4})
    body = admin_client.get("/clusters/").content.decode()
    changes = body[body.index("<h2>Changes</h2>") :]
    assert changes.index("<td>3</td><td>4</td>") < changes.index("<td>2</td><td>3</td>")
