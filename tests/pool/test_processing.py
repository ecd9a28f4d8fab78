"""Rules of pool.processing, on hand-made edges and on four real rrweb recordings."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from pool.processing import (
    RageClick,
    SessionSummary,
    compress_stream,
    decompress_stream,
    summarize,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "rrweb"

T0 = 1_700_000_000_000  # first full snapshot of every hand-made session


# --- event builders ---------------------------------------------------------


def full_snapshot(ts: int = T0) -> dict[str, Any]:
    return {"type": 2, "timestamp": ts, "data": {"node": {}, "initialOffset": {"top": 0}}}


def meta(ts: int, href: Any) -> dict[str, Any]:
    return {"type": 4, "timestamp": ts, "data": {"href": href, "width": 800, "height": 600}}


def incremental(ts: int, source: Any, **data: Any) -> dict[str, Any]:
    return {"type": 3, "timestamp": ts, "data": {"source": source, **data}}


def move(ts: int) -> dict[str, Any]:
    return incremental(ts, 1, positions=[{"x": 1, "y": 1, "id": 1, "timeOffset": -20}])


def mutation(ts: int) -> dict[str, Any]:
    return incremental(ts, 0, adds=[], removes=[], texts=[], attributes=[])


def click(ts: int, x: Any = 100, y: Any = 100, kind: int = 2) -> dict[str, Any]:
    return incremental(ts, 2, type=kind, id=7, x=x, y=y)


def bare_click(ts: int) -> dict[str, Any]:
    return incremental(ts, 2, type=2, id=7)


def custom(ts: int, tag: str, payload: Any) -> dict[str, Any]:
    return {"type": 5, "timestamp": ts, "data": {"tag": tag, "payload": payload}}


def console(ts: int, level: str, plugin: str = "rrweb/console@1") -> dict[str, Any]:
    payload = {"level": level, "trace": [], "payload": ['"boom"']}
    return {"type": 6, "timestamp": ts, "data": {"plugin": plugin, "payload": payload}}


def summary_of(events: list[dict[str, Any]], **payload: Any) -> SessionSummary:
    return summarize([{"payload_id": 0, "events": events, **payload}])[0]


def burst(count: int, step: int = 100, x: float = 100, y: float = 100) -> list[dict[str, Any]]:
    return [click(T0 + 1_000 + i * step, x, y) for i in range(count)]


def load(name: str) -> list[dict[str, Any]]:
    return json.loads((FIXTURES / f"{name}.payloads.json").read_text())["payloads"]


# --- rage clicks ------------------------------------------------------------


def test_five_clicks_on_one_spot_are_not_a_rage_click() -> None:
    summary = summary_of([full_snapshot(), *burst(5)])
    assert summary.click_count == 5
    assert summary.rage_clicks == []


def test_a_sixth_click_within_8px_opens_a_rage_click_set() -> None:
    summary = summary_of([full_snapshot(), *burst(6)])
    # clicks is the count of OTHER clicks in range on the sixth click (5), as the rule says.
    assert summary.rage_clicks == [RageClick(start_ms=T0 + 1_000, end_ms=T0 + 1_500, clicks=5)]


def test_a_click_exactly_8px_away_is_in_range() -> None:
    events = [full_snapshot(), *burst(5), click(T0 + 1_500, x=108, y=100)]
    assert len(summary_of(events).rage_clicks) == 1


def test_a_click_8_point_1px_away_is_out_of_range() -> None:
    events = [full_snapshot(), *burst(5), click(T0 + 1_500, x=108.1, y=100)]
    assert summary_of(events).rage_clicks == []


def test_radius_is_euclidean() -> None:
    # (6, 6) is 8.49 px away although each axis is within 8 px.
    events = [full_snapshot(), *burst(5), click(T0 + 1_500, x=106, y=106)]
    assert summary_of(events).rage_clicks == []


def test_a_click_exactly_5000ms_old_stays_in_the_window() -> None:
    events = [full_snapshot(), *burst(5, step=1_000), click(T0 + 6_000)]
    assert summary_of(events).rage_clicks == [RageClick(T0 + 1_000, T0 + 6_000, 5)]


def test_a_click_5001ms_old_drops_out_of_the_window() -> None:
    events = [full_snapshot(), *burst(5, step=1_000), click(T0 + 6_001)]
    assert summary_of(events).rage_clicks == []


def test_any_incremental_event_expires_old_clicks_before_the_next_click() -> None:
    # Burst of 5 ending at T0+1400; a click 5,001 ms after the first one sees only 4 others.
    events = [full_snapshot(), *burst(5), move(T0 + 6_001), click(T0 + 6_001)]
    assert summary_of(events).rage_clicks == []


def test_a_seventh_click_extends_the_open_set() -> None:
    summary = summary_of([full_snapshot(), *burst(7)])
    assert summary.rage_clicks == [RageClick(T0 + 1_000, T0 + 1_600, 6)]


def test_a_click_out_of_range_closes_the_set_and_the_next_burst_click_opens_another() -> None:
    events = [
        full_snapshot(),
        *burst(7),  # T0+1000 .. T0+1600: set opens on the 6th, extends on the 7th
        click(T0 + 1_700, x=500, y=500),  # no neighbours -> closes the set
        click(T0 + 1_800),  # 7 queued neighbours -> a new set with clicks = 7
    ]
    assert summary_of(events).rage_clicks == [
        RageClick(T0 + 1_000, T0 + 1_600, 6),
        RageClick(T0 + 1_000, T0 + 1_800, 7),
    ]


def test_the_set_start_is_the_earliest_click_in_range_not_the_earliest_queued() -> None:
    events = [full_snapshot(), click(T0 + 500, x=900, y=900), *burst(6)]
    assert summary_of(events).rage_clicks == [RageClick(T0 + 1_000, T0 + 1_500, 5)]


def test_clicks_without_coordinates_count_as_clicks_but_not_for_rage() -> None:
    events = [full_snapshot(), *[bare_click(T0 + 1_000 + i * 100) for i in range(6)]]
    summary = summary_of(events)
    assert summary.click_count == 6
    assert summary.rage_clicks == []


def test_clicks_with_non_numeric_coordinates_count_as_clicks_but_not_for_rage() -> None:
    weird = [("100", 100), (100, None), (True, 100), (100, [1])]
    events = [
        full_snapshot(),
        *burst(4),
        *[click(T0 + 2_000 + i, x, y) for i, (x, y) in enumerate(weird)],
    ]
    summary = summary_of(events)
    assert summary.click_count == 8
    assert summary.rage_clicks == []


def test_double_clicks_count_and_mouse_down_up_and_focus_do_not() -> None:
    events = [
        full_snapshot(),
        click(T0 + 1, kind=0),  # MouseDown
        click(T0 + 2, kind=1),  # MouseUp
        click(T0 + 3, kind=2),  # Click
        click(T0 + 4, kind=4),  # DblClick
        incremental(T0 + 5, 2, type=5, id=7),  # Focus
    ]
    assert summary_of(events).click_count == 2


# --- length and activity ----------------------------------------------------


def activity(start: int, stop: int, step: int) -> list[dict[str, Any]]:
    return [move(T0 + ts) for ts in range(start, stop + 1, step)]


def test_length_runs_from_first_full_snapshot_to_last_incremental_event() -> None:
    events = [
        meta(T0 - 5, "https://a.test/"),
        full_snapshot(),
        move(T0 + 2_000),
        mutation(T0 + 3_000),
    ]
    events.append(custom(T0 + 9_000, "later", {}))  # not incremental: does not extend the length
    assert summary_of(events).length_ms == 3_000


def test_a_gap_of_exactly_10s_is_active() -> None:
    events = [full_snapshot(), *activity(1_000, 5_000, 1_000), *activity(15_000, 20_000, 1_000)]
    summary = summary_of(events)
    assert summary.length_ms == 20_000
    assert summary.active_ms == 20_000
    assert summary.active_intervals == [(T0, T0 + 20_000)]


def test_a_gap_of_10001ms_is_inactive() -> None:
    events = [full_snapshot(), *activity(1_000, 5_000, 1_000), *activity(15_001, 20_001, 1_000)]
    summary = summary_of(events)
    assert summary.length_ms == 20_001
    assert summary.active_ms == 10_000
    assert summary.active_intervals == [(T0, T0 + 5_000), (T0 + 15_001, T0 + 20_001)]


def session_with_gap(gap: int) -> list[dict[str, Any]]:
    # 1,000,000 ms long, so 2 % is 20,000 ms; activity every 5 s around one gap.
    second = [move(T0 + ts) for ts in range(500_000 + gap, 1_000_000, 5_000)]
    return [full_snapshot(), *activity(5_000, 500_000, 5_000), *second, move(T0 + 1_000_000)]


def test_an_inactive_gap_just_under_2_percent_of_the_length_is_absorbed() -> None:
    summary = summary_of(session_with_gap(19_999))
    assert summary.length_ms == 1_000_000
    assert summary.active_ms == 1_000_000
    assert summary.active_intervals == [(T0, T0 + 1_000_000)]


def test_an_inactive_gap_just_over_2_percent_of_the_length_stays_inactive() -> None:
    summary = summary_of(session_with_gap(20_001))
    assert summary.active_ms == 1_000_000 - 20_001
    assert summary.active_intervals == [(T0, T0 + 500_000), (T0 + 520_001, T0 + 1_000_000)]


def test_non_interaction_events_keep_nothing_active_but_the_last_one_ends_the_span() -> None:
    # Mutations are not user input; the last one is still the "last event" end point.
    events = [full_snapshot(), move(T0 + 1_000), mutation(T0 + 5_000), mutation(T0 + 30_000)]
    summary = summary_of(events)
    assert summary.length_ms == 30_000
    assert summary.active_intervals == [(T0, T0 + 1_000)]
    assert summary.active_ms == 1_000


# --- full snapshot ordering -------------------------------------------------


def test_incremental_events_before_the_first_full_snapshot_are_skipped() -> None:
    events = [
        click(T0 - 300),
        incremental(T0 - 200, 5, text="x", isChecked=False, id=3),
        full_snapshot(),
        move(T0 + 1_000),
    ]
    summary = summary_of(events)
    assert summary.click_count == 0
    assert summary.length_ms == 1_000
    assert sum(summary.event_counts) == 1
    assert summary.event_total == 4  # the stream itself keeps every event


def test_meta_custom_and_plugin_events_before_the_first_full_snapshot_count() -> None:
    events = [
        meta(T0 - 30, "https://a.test/"),
        custom(T0 - 20, "Navigate", "https://a.test/next"),
        console(T0 - 10, "error"),
        full_snapshot(),
        move(T0 + 1_000),
    ]
    summary = summary_of(events)
    assert summary.pages == ["https://a.test/", "https://a.test/next"]
    assert summary.error_count == 1
    assert summary.event_counts[0] == 1  # the early custom event is clamped into bucket 0
    assert sum(summary.event_counts) == 2


def test_without_a_full_snapshot_the_length_is_zero_and_the_session_is_excluded() -> None:
    summary = summary_of([meta(T0, "https://a.test/"), move(T0 + 1_000), click(T0 + 2_000)])
    assert summary.length_ms == 0
    assert summary.active_ms == 0
    assert summary.click_count == 0
    assert summary.event_counts == [0] * 100
    assert summary.excluded_reason == "no_full_snapshot"


def test_a_full_snapshot_without_any_activity_is_excluded_as_no_activity() -> None:
    summary = summary_of([meta(T0, "https://a.test/"), full_snapshot()])
    assert summary.length_ms == 0
    assert summary.excluded_reason == "no_activity"


def test_a_session_with_activity_is_not_excluded() -> None:
    assert summary_of([full_snapshot(), move(T0 + 1)]).excluded_reason == ""


def test_only_the_first_full_snapshot_starts_the_session() -> None:
    events = [full_snapshot(), move(T0 + 1_000), full_snapshot(T0 + 2_000), move(T0 + 3_000)]
    assert summary_of(events).length_ms == 3_000


# --- event histogram --------------------------------------------------------


def test_event_counts_bucket_interactions_and_custom_events_over_the_length() -> None:
    events = [
        full_snapshot(),
        move(T0),  # bucket 0
        click(T0 + 4_999),  # 49.99 -> bucket 49
        custom(T0 + 5_000, "cart", {}),  # bucket 50
        mutation(T0 + 6_000),  # not counted
        incremental(T0 + 7_000, 4, width=1, height=1),  # ViewportResize: not counted
        move(T0 + 10_000),  # 100 -> clamped to 99
    ]
    counts = summary_of(events).event_counts
    assert len(counts) == 100
    assert (counts[0], counts[49], counts[50], counts[99]) == (1, 1, 1, 1)
    assert sum(counts) == 4


# --- pages and errors -------------------------------------------------------


def test_pages_come_from_meta_and_navigate_events_in_order() -> None:
    events = [
        meta(T0 - 1, "https://a.test/"),
        full_snapshot(),
        custom(T0 + 1, "Navigate", "https://a.test/b"),
        custom(T0 + 2, "Navigate", {"href": "https://a.test/c"}),
        custom(T0 + 3, "Identify", "https://not-a-page.test/"),
        meta(T0 + 4, "https://a.test/d"),
    ]
    summary = summary_of(events)
    assert summary.pages == [
        "https://a.test/",
        "https://a.test/b",
        "https://a.test/c",
        "https://a.test/d",
    ]
    assert summary.landing_page == "https://a.test/"
    assert summary.exit_page == "https://a.test/d"


def test_a_session_without_pages_has_empty_landing_and_exit_pages() -> None:
    summary = summary_of([full_snapshot(), move(T0 + 1)])
    assert (summary.pages, summary.landing_page, summary.exit_page) == ([], "", "")


def test_error_count_adds_console_errors_and_asserts_to_payload_errors() -> None:
    events = [
        full_snapshot(),
        console(T0 + 1, "error"),
        console(T0 + 2, "assert"),
        console(T0 + 3, "log"),
        console(T0 + 4, "warn"),
        console(T0 + 5, "error", plugin="rrweb/sequential-id@1"),
    ]
    errors = [{"message": "Uncaught Error: a", "timestamp": T0}, {"message": "b", "timestamp": T0}]
    assert summary_of(events, errors=errors).error_count == 4


# --- merging and ordering ---------------------------------------------------


def test_payloads_given_out_of_order_are_merged_in_payload_id_order() -> None:
    first = {"payload_id": 0, "events": [full_snapshot(), click(T0 + 1_000)]}
    second = {
        "payload_id": 1,
        "events": [move(T0 + 2_000)],
        "errors": [{"message": "x", "timestamp": 1}],
    }
    summary, stream = summarize([second, first])
    assert stream == first["events"] + second["events"]
    assert summary.length_ms == 2_000
    assert summary.error_count == 1
    assert summary.out_of_order is False


def test_a_missing_payload_id_marks_the_session_out_of_order() -> None:
    payloads = [
        {"payload_id": 0, "events": [full_snapshot()]},
        {"payload_id": 2, "events": [move(T0 + 1)]},
    ]
    assert summarize(payloads)[0].out_of_order is True


def test_a_first_payload_id_other_than_zero_marks_the_session_out_of_order() -> None:
    payloads = [
        {"payload_id": 1, "events": [full_snapshot()]},
        {"payload_id": 2, "events": [move(T0 + 1)]},
    ]
    assert summarize(payloads)[0].out_of_order is True


def test_timestamps_going_backwards_mark_the_session_out_of_order() -> None:
    payloads = [
        {"payload_id": 0, "events": [full_snapshot(), move(T0 + 2_000)]},
        {"payload_id": 1, "events": [move(T0 + 1_999)]},
    ]
    summary = summarize(payloads)[0]
    assert summary.out_of_order is True
    assert summary.length_ms == 1_999  # the last incremental in processing order, not the latest


def test_event_total_and_first_and_last_timestamps_cover_the_whole_stream() -> None:
    summary = summary_of([meta(T0 - 50, "https://a.test/"), full_snapshot(), move(T0 + 70)])
    assert (summary.event_total, summary.first_ts, summary.last_ts) == (3, T0 - 50, T0 + 70)


def test_no_payloads_give_an_empty_excluded_summary() -> None:
    summary, stream = summarize([])
    assert stream == []
    assert summary.event_total == 0
    assert (summary.first_ts, summary.last_ts) == (None, None)
    assert summary.excluded_reason == "no_full_snapshot"
    assert summary.out_of_order is False


# --- robustness and serialisation -------------------------------------------


def test_weird_data_fields_never_raise() -> None:
    events = [
        meta(T0 - 1, 42),
        meta(T0 - 1, None),
        full_snapshot(),
        {"type": 3, "timestamp": T0 + 1, "data": {}},
        incremental(T0 + 2, "2", type=2, x=1, y=1),
        incremental(T0 + 3, 2, type="2", x=1, y=1),
        incremental(T0 + 4, 2, type=2, x=float("nan"), y=1),
        incremental(T0 + 5, [1], type=[2]),
        custom(T0 + 6, "Navigate", None),
        custom(T0 + 7, "Navigate", ["https://a.test/"]),
        custom(T0 + 8, "Navigate", {"href": 3}),
        {"type": 5, "timestamp": T0 + 9, "data": {"tag": ["Navigate"]}},
        {
            "type": 6,
            "timestamp": T0 + 10,
            "data": {"plugin": "rrweb/console@1", "payload": "error"},
        },
        {
            "type": 6,
            "timestamp": T0 + 11,
            "data": {"plugin": "rrweb/console@1", "payload": {"level": ["error"]}},
        },
        {"type": 6, "timestamp": T0 + 12, "data": {"plugin": None}},
        {"type": 99, "timestamp": T0 + 13, "data": {}},
        {"type": 3, "timestamp": T0 + 14, "data": "not a dict"},
    ]
    summary = summary_of(events, errors="not a list")
    assert summary.click_count == 1  # only the NaN-coordinate click is a real click
    assert summary.pages == []
    assert summary.error_count == 0
    assert summary.length_ms == 14
    json.dumps(summary.as_dict())


def test_as_dict_is_json_serialisable_with_lists_and_plain_dicts() -> None:
    summary = summary_of([full_snapshot(), *burst(6)])
    data = json.loads(json.dumps(summary.as_dict()))
    assert data["rage_clicks"] == [{"start_ms": T0 + 1_000, "end_ms": T0 + 1_500, "clicks": 5}]
    assert data["active_intervals"] == [[T0, T0 + 1_500]]
    assert len(data["event_counts"]) == 100
    assert set(data) == set(SessionSummary.__dataclass_fields__)


def test_a_compressed_stream_decompresses_to_the_same_events() -> None:
    events = [full_snapshot(), click(T0 + 1, x=1.5), custom(T0 + 2, "Navigate", "https://ä.test/")]
    blob = compress_stream(events)
    assert isinstance(blob, bytes)
    assert decompress_stream(blob) == events


def test_decompress_also_reads_gzip() -> None:
    events = [full_snapshot()]
    assert decompress_stream(gzip.compress(json.dumps(events).encode())) == events


# --- real recordings --------------------------------------------------------
# Figures below were derived by listing each recording's events (type, source,
# MouseInteraction type, x/y, timestamp) by hand, not from this module's output.


def test_checkout_recording() -> None:
    payloads = load("checkout")
    summary, stream = summarize(payloads)
    # 10 payloads, 117 events; first event DomContentLoaded at ...964772.
    assert (summary.event_total, summary.first_ts, summary.last_ts) == (
        117,
        1796414964772,
        1796414983799,
    )
    # First FullSnapshot ...964806 (index.html); last incremental is the mutation
    # after the last click at ...983799 -> 18,993 ms. The second FullSnapshot
    # (list.html, ...974407) does not restart the session.
    assert summary.length_ms == 18_993
    # MouseInteraction type 2 on ids 33, 38, 43 (3 inputs), 50 (submit), 57 (link),
    # 95, 116, 130 (3 clicks 2.5 s apart at different y) -> 8 clicks, never 6 close together.
    assert summary.click_count == 8
    assert summary.rage_clicks == []
    # Meta hrefs: index.html, then list.html after navigation; no custom events.
    assert summary.pages == [
        "http://127.0.0.1:36931/index.html",
        "http://127.0.0.1:36931/list.html",
    ]
    assert summary.landing_page == "http://127.0.0.1:36931/index.html"
    assert summary.exit_page == "http://127.0.0.1:36931/list.html"
    # No plugin (type 6) events and no payload errors.
    assert summary.error_count == 0
    # Largest gap between interactions is 2,533 ms (...981265 -> ...983798): all active.
    assert summary.active_ms == 18_993
    assert summary.active_intervals == [(1796414964806, 1796414983799)]
    # 10 mouse moves + 38 mouse interactions + 7 scrolls + 50 inputs, all after the snapshot.
    assert sum(summary.event_counts) == 105
    assert summary.out_of_order is False
    assert summary.excluded_reason == ""
    assert decompress_stream(compress_stream(stream)) == stream


def test_demoit_recording() -> None:
    summary, stream = summarize(load("demoit-react-hooks"))
    # 39 payloads, 272 events; starts with Meta at ...766750.
    assert (summary.event_total, summary.first_ts, summary.last_ts) == (
        272,
        1544756766750,
        1544756847830,
    )
    # FullSnapshot ...766761 to the last mutation ...847830 -> 81,069 ms.
    assert summary.length_ms == 81_069
    # Clicks at (757,268) +1.7 s, (387,463) +46.9 s, (105,23) +71.0 s -> 3, no rage.
    assert summary.click_count == 3
    assert summary.rage_clicks == []
    assert summary.pages == ["https://demoit.app/e/react#ReactHooks.js"]
    assert summary.landing_page == summary.exit_page == "https://demoit.app/e/react#ReactHooks.js"
    assert summary.error_count == 0
    # Interactions: snapshot ...766761 to click ...768475 (1,714 ms); then only
    # mutations for 42.7 s; moves/clicks/scrolls ...811187 to ...819398 (8,211 ms);
    # 17.1 s of mutations; ...836504 to the blur at ...840500, then the last event
    # ...847830 is 7.3 s later, still active (11,326 ms). Both gaps exceed 2 % (1,621 ms).
    assert summary.active_intervals == [
        (1544756766761, 1544756768475),
        (1544756811187, 1544756819398),
        (1544756836504, 1544756847830),
    ]
    assert summary.active_ms == 1_714 + 8_211 + 11_326
    # 18 mouse moves + 14 mouse interactions + 12 scrolls.
    assert sum(summary.event_counts) == 44
    assert summary.out_of_order is False
    assert summary.excluded_reason == ""
    assert decompress_stream(compress_stream(stream)) == stream


def test_idle_recording() -> None:
    summary, stream = summarize(load("idle"))
    assert (summary.event_total, summary.first_ts, summary.last_ts) == (
        55,
        1796414987614,
        1796415018596,
    )
    # FullSnapshot ...987656 to the final mutation ...018596 -> 30,940 ms.
    assert summary.length_ms == 30_940
    # Clicks on ids 33, 63, 38, 50 -> 4, all far apart.
    assert summary.click_count == 4
    assert summary.rage_clicks == []
    assert summary.pages == ["http://127.0.0.1:36931/index.html"]
    assert summary.landing_page == summary.exit_page == "http://127.0.0.1:36931/index.html"
    assert summary.error_count == 0
    # Last move before the idle stretch ...990798, next move ...016647: a 25,849 ms
    # gap, > 10 s and > 2 % (619 ms), so it splits the session:
    # 3,142 ms (snapshot -> ...990798) + 1,949 ms (...016647 -> ...018596).
    assert summary.active_intervals == [
        (1796414987656, 1796414990798),
        (1796415016647, 1796415018596),
    ]
    assert summary.active_ms == 5_091
    # 6 moves + 19 mouse interactions + 2 scrolls + 23 inputs = 50; the idle
    # stretch spans buckets 11..92 (3,142/30,940 -> 10; 28,991/30,940 -> 93).
    assert sum(summary.event_counts) == 50
    assert summary.event_counts[11:93] == [0] * 82
    assert summary.event_counts[2] > 0 and summary.event_counts[99] > 0
    assert summary.out_of_order is False
    assert summary.excluded_reason == ""
    assert decompress_stream(compress_stream(stream)) == stream


def test_empty_recording() -> None:
    summary, stream = summarize(load("empty"))
    # DomContentLoaded, Load, Meta, FullSnapshot: no incremental event at all.
    assert (summary.event_total, summary.first_ts, summary.last_ts) == (
        4,
        1796414941791,
        1796414941833,
    )
    assert summary.length_ms == 0
    assert summary.active_ms == 0
    assert summary.active_intervals == []
    assert summary.event_counts == [0] * 100
    assert summary.click_count == 0
    assert summary.rage_clicks == []
    assert summary.pages == ["http://127.0.0.1:39825/index.html"]
    assert summary.landing_page == summary.exit_page == "http://127.0.0.1:39825/index.html"
    assert summary.error_count == 0
    assert summary.out_of_order is False
    # Has a full snapshot, but nothing active.
    assert summary.excluded_reason == "no_activity"
    assert decompress_stream(compress_stream(stream)) == stream


@pytest.mark.parametrize("name", ["checkout", "demoit-react-hooks", "idle", "empty"])
def test_recordings_summarise_the_same_whatever_order_the_payloads_arrive_in(name: str) -> None:
    payloads = load(name)
    assert summarize(reversed(payloads)) == summarize(payloads)


def test_a_click_with_an_earlier_timestamp_still_expires_from_the_window_in_time() -> None:
    # The late-stamped click (T0+900) must leave the queue once it is 5,001 ms old,
    # even though it was queued after a newer one.
    events = [
        full_snapshot(),
        click(T0 + 1_000),
        click(T0 + 900),
        *[click(T0 + 5_901 + i) for i in range(4)],
    ]
    summary = summary_of(events)
    assert summary.out_of_order is True
    assert summary.rage_clicks == []
