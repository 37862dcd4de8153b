"""Prometheus metrics: scraped from a real server during a real media session (aiortc peers, one of
them relayed through the TURN server), the whole exposition parsed by prometheus-client's parser,
and the packet, peer, join-time and relay series seen to move."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from control.metrics.serve import ADMIN_ADDRESS
from tests.conftest import Api, SettingsFactory, sqlite_only
from tests.rtc_clients import Participant
from tests.server_process import (
    ServerProcess,
    client_session,
    free_port,
    invite_code_of,
    join_meeting,
    make_meeting,
    make_user,
    request,
    start_server,
)
from tests.support import MEETINGS, until

TOKEN = "metrics-token-0123456789"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of the exposition, by name and labels; the parser fails on anything malformed."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.documentation, f"{family.name} has no help text"
        assert family.name.startswith(("huiyi_", "process_")), family.name
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, found), v in samples.items() if n == name and wanted <= found)


async def scrape(url: str, token: str | None = None) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with client_session() as http, http.get(url, headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/plain")
        return parse(await response.text())


async def test_series_move_during_a_media_session(tmp_path: Path, people: list[Participant]) -> None:
    port = free_port()
    env = {
        "HUIYI_RATE_LIMITS": "off",
        "HUIYI_SFU_BIND_ADDRESSES": "127.0.0.1",
        "HUIYI_METRICS_PORT": str(port),
        "HUIYI_METRICS_TOKEN": TOKEN,
        "HUIYI_TURN_ENABLED": "true",
        "HUIYI_TURN_LISTEN_HOST": "127.0.0.1",
        "HUIYI_TURN_PORT": "0",
        "HUIYI_TURN_RELAY_PORT_MIN": "0",
        "HUIYI_TURN_RELAY_PORT_MAX": "0",
        "HUIYI_TURN_ALLOWED_PEER_CIDRS": "127.0.0.1/32",
    }
    server: ServerProcess = await asyncio.to_thread(
        start_server, "--data-dir", str(tmp_path / "data"), log=tmp_path / "server.log", env=env
    )
    admin_url = f"http://127.0.0.1:{port}/metrics"
    try:
        before = await scrape(admin_url)
        assert value(before, "huiyi_sfu_peers") == 0 and value(before, "huiyi_turn_up") == 1
        assert value(before, "huiyi_sfu_forwarded_packets_total") == 0

        host_token, host_id = make_user(server.url, "metered_host")
        meeting_id = make_meeting(server.url, host_token)
        join_meeting(server.url, host_token, meeting_id)
        host = Participant(server.url, host_token, host_id, meeting_id)
        people.append(host)
        await host.connect()
        await host.publish(video=(160, 120), audio=True)
        guest_token, guest_id = make_user(server.url, "metered_guest")
        join_meeting(server.url, guest_token, meeting_id, invite_code_of(server.url, host_token, meeting_id))
        guest = Participant(server.url, guest_token, guest_id, meeting_id, relay_only=True)
        people.append(guest)
        await guest.connect()
        await until(lambda: (t := guest.video_from(host_id)) is not None and t.frames >= 10, "relayed video", 30)

        during = await scrape(admin_url)
        assert value(during, "huiyi_sfu_peers") == 2 and value(during, "huiyi_sfu_rooms") == 1
        assert value(during, "huiyi_signaling_sockets") == 2
        assert value(during, "huiyi_sfu_tracks", kind="video") == 1
        assert value(during, "huiyi_sfu_tracks", kind="audio") == 1
        assert value(during, "huiyi_sfu_subscriptions") == 2
        assert value(during, "huiyi_sfu_received_packets_total") > 10
        forwarded = value(during, "huiyi_sfu_forwarded_packets_total")
        assert forwarded > 10 and value(during, "huiyi_sfu_forwarded_bytes_total") > 1000
        # The guest waited for its first media once; the host, alone when it joined, got none yet.
        assert value(during, "huiyi_sfu_join_seconds_count") == 1
        assert 0 < value(during, "huiyi_sfu_join_seconds_sum") < 20
        assert value(during, "huiyi_turn_allocations") >= 1
        assert value(during, "huiyi_turn_relayed_bytes_total", direction="to_clients") > 1000
        assert value(during, "huiyi_event_loop_lag_seconds_count") > 0
        assert value(during, "process_resident_memory_bytes") > 0
        # Requests are counted by route template: the meeting's id is in no label.
        joins = total(during, "huiyi_http_requests_total", route="/api/v1/meetings/{meeting_id}/join", status="200")
        assert joins == 2
        routes = {text for (_, found) in during for key, text in found if key == "route"}
        assert not [route for route in routes if re.search(r"/\d+(/|$)", route)], routes
        assert total(during, "huiyi_http_request_duration_seconds_count", route="/api/v1/auth/login") == 2

        # The same exposition on the public port, for the token's holder only.
        public = await scrape(server.url + "/metrics", TOKEN)
        assert value(public, "huiyi_sfu_peers") == 2
        async with client_session() as http, http.get(server.url + "/metrics") as refused:
            assert refused.status == 401

        # A guest leaving takes its counts along into the totals: counters never go back.
        assert request("POST", f"{server.url}{MEETINGS}/{meeting_id}/leave", {}, guest_token)[0] == 200
        after = await until(lambda: _peers_are(admin_url, 1), "the guest's media peer gone", 10)
        assert value(after, "huiyi_sfu_forwarded_packets_total") >= forwarded
        assert value(after, "huiyi_sfu_subscriptions") == 0
    finally:
        await asyncio.gather(*(person.close() for person in people), return_exceptions=True)
        await asyncio.to_thread(server.stop)


async def _peers_are(url: str, count: int) -> Samples | None:
    samples = await scrape(url)
    return samples if value(samples, "huiyi_sfu_peers") == count else None


@sqlite_only
async def test_rate_limit_refusals_are_counted(settings_factory: SettingsFactory, make_api: Callable[..., Any]) -> None:
    api: Api = await make_api(settings_factory(rate_limits={"enabled": True}))
    attempt = {"username": "nobody", "password": "whatever1"}
    for _ in range(6):
        await api.call("POST", "/api/v1/auth/login", json=attempt)
    host, port = api.app[ADMIN_ADDRESS]
    assert host == "127.0.0.1"
    samples = await scrape(f"http://{host}:{port}/metrics")
    assert value(samples, "huiyi_rate_limit_refusals_total", operation="auth.login") == 1
    assert value(samples, "huiyi_http_requests_total", method="POST", route="/api/v1/auth/login", status="429") == 1
    assert value(samples, "huiyi_http_requests_total", method="POST", route="/api/v1/auth/login", status="404") == 5
    # Without a token, the public port has no metrics at all.
    missing = await api.call("GET", "/metrics", expect=404)
    assert missing["code"] == 404
