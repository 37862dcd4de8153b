"""Series read at scrape time from what the node's parts already keep: the media server's rooms,
peers and packet totals, the signaling hub's sockets, the rate limiter's refusals, the recordings
running, and, asked for just before (``refresh``), the TURN process's counters, the job table and
the AI worker nodes. Nothing is added to the media path to produce them."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from control.context import AI, HUB, LIMITER, SFU, STORE, TURN

log = logging.getLogger("huiyi.metrics")

REFRESH_SECONDS = 2.0  # a scrape waits at most this long for the TURN process, database and nodes

# (series, help, attribute of sfu.counters.MediaTotals)
MEDIA_TOTALS = (
    ("huiyi_sfu_received_packets", "RTP packets received from publishers", "received_packets"),
    ("huiyi_sfu_received_bytes", "RTP bytes (payload) received from publishers", "received_bytes"),
    ("huiyi_sfu_forwarded_packets", "RTP packets forwarded to subscribers", "forwarded_packets"),
    ("huiyi_sfu_forwarded_bytes", "RTP bytes forwarded to subscribers", "forwarded_bytes"),
    ("huiyi_sfu_nacks_received", "NACKs received from subscribers", "nacks_received"),
    ("huiyi_sfu_nacks_sent", "NACKs sent to publishers for packets that did not arrive", "nacks_sent"),
    ("huiyi_sfu_retransmitted_packets", "Packets sent again to subscribers that NACKed them", "retransmitted_packets"),
    ("huiyi_sfu_plis_received", "Picture loss indications (key frame requests) from subscribers", "plis_received"),
    ("huiyi_sfu_firs_received", "Full intra requests from subscribers", "firs_received"),
    ("huiyi_sfu_keyframe_requests", "Key frames requested from publishers (PLI)", "keyframe_requests_sent"),
    ("huiyi_sfu_layer_switches", "Simulcast layer switches made for subscribers", "layer_switches"),
    (
        "huiyi_sfu_receiver_lost_packets",
        "Packets the subscribers' receiver reports count as lost on the way to them",
        "receiver_lost_packets",
    ),
)
# TURN counters (turn/counters.py) as (series, help, counter, labels)
TURN_TOTALS: tuple[tuple[str, str, str, dict[str, str]], ...] = (
    ("huiyi_turn_allocations_created", "TURN allocations made", "allocations_created", {}),
    ("huiyi_turn_allocations_refused", "TURN allocations refused (quota, capacity)", "allocations_refused", {}),
    ("huiyi_turn_relayed_packets", "Packets relayed", "packets_to_peers", {"direction": "to_peers"}),
    ("huiyi_turn_relayed_packets", "Packets relayed", "packets_to_clients", {"direction": "to_clients"}),
    ("huiyi_turn_relayed_bytes", "Bytes relayed", "bytes_to_peers", {"direction": "to_peers"}),
    ("huiyi_turn_relayed_bytes", "Bytes relayed", "bytes_to_clients", {"direction": "to_clients"}),
    ("huiyi_turn_dropped_packets", "Packets dropped, by reason", "no_permission", {"reason": "no_permission"}),
    ("huiyi_turn_dropped_packets", "Packets dropped, by reason", "over_bandwidth", {"reason": "over_bandwidth"}),
    ("huiyi_turn_dropped_packets", "Packets dropped, by reason", "client_backlog", {"reason": "client_backlog"}),
    ("huiyi_turn_dropped_packets", "Packets dropped, by reason", "malformed", {"reason": "malformed"}),
    ("huiyi_turn_requests", "STUN/TURN requests handled", "requests", {}),
    ("huiyi_turn_unauthenticated", "Requests refused for missing or wrong credentials", "unauthenticated", {}),
)


@dataclass
class Snapshot:
    """What had to be asked for with a wait, as of the last refresh."""

    turn: dict[str, int] | None = None
    jobs: list[tuple[str, str, int]] = field(default_factory=list)
    ai_nodes: Counter[str] = field(default_factory=Counter)
    # Each online AI node's heartbeat: its running jobs and what it finished since it started.
    ai_online: list[dict[str, Any]] = field(default_factory=list)
    webhooks_pending: int | None = None


class NodeCollector(Collector):
    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.snapshot = Snapshot()

    async def refresh(self) -> None:
        """Ask the TURN process, the database and the AI nodes, each bounded in time; what does
        not answer is left out of this scrape rather than holding it up."""
        snapshot = Snapshot()

        async def turn() -> None:
            if self.app[TURN].running:
                snapshot.turn = await self.app[TURN].counters()

        async def jobs() -> None:
            snapshot.jobs = await self.app[STORE].jobs.counts()

        async def nodes() -> None:
            known = await self.app[AI].known_nodes()
            snapshot.ai_nodes = Counter(node["status"] for node in known)
            snapshot.ai_online = [node for node in known if node["status"] == "online"]

        async def webhooks() -> None:
            snapshot.webhooks_pending = await self.app[STORE].webhooks.pending_count()

        results = await asyncio.gather(
            *(asyncio.wait_for(work(), REFRESH_SECONDS) for work in (turn, jobs, nodes, webhooks)),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, Exception):
                log.debug("a metrics source did not answer: %r", result)
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from self._media()
        yield from self._control()
        yield from self._turn()
        yield from self._work()

    def _media(self) -> Iterator[Metric]:
        """Per media worker (label ``worker``) when the node has workers; one series when media runs
        in the server's own process."""
        loads = self.app[SFU].loads()
        labels = ["worker"] if any(load.worker is not None for load in loads) else []

        def per_worker(
            family: GaugeMetricFamily | CounterMetricFamily, value: Any, worker: int | None, *extra: str
        ) -> None:
            family.add_metric([*extra, *([str(worker)] if labels else [])], value)

        rooms = GaugeMetricFamily("huiyi_sfu_rooms", "Rooms with media on this node", labels=labels)
        peers = GaugeMetricFamily(
            "huiyi_sfu_peers", "Media peers (one per joined signaling session) on this node", labels=labels
        )
        tracks = GaugeMetricFamily(
            "huiyi_sfu_tracks", "Published tracks on this node, by kind", labels=["kind", *labels]
        )
        downtracks = GaugeMetricFamily(
            "huiyi_sfu_subscriptions", "Tracks forwarded to subscribers (down-tracks)", labels=labels
        )
        totals = [(CounterMetricFamily(name, doc, labels=labels), attribute) for name, doc, attribute in MEDIA_TOTALS]
        for load in loads:
            per_worker(rooms, len(load.rooms), load.worker)
            per_worker(peers, load.peers, load.worker)
            for kind in ("audio", "video"):
                per_worker(tracks, load.tracks.get(kind, 0), load.worker, kind)
            per_worker(downtracks, load.downtracks, load.worker)
            for family, attribute in totals:
                per_worker(family, getattr(load.totals, attribute), load.worker)
        yield from (rooms, peers, tracks, downtracks)
        yield from (family for family, _ in totals)
        if labels:
            restarts = CounterMetricFamily(
                "huiyi_sfu_worker_restarts", "Media workers started again after they ended", labels=labels
            )
            for worker, count in self.app[SFU].restarts().items():
                restarts.add_metric([str(worker)], count)
            yield restarts
        media = self.app[SFU]
        yield _gauge("huiyi_recordings_running", "Recordings this node's media server writes", len(media.recordings()))
        yield _gauge("huiyi_streams_running", "Live streams this node's media server feeds", len(media.streams()))

    def _ai_jobs(self) -> Iterator[Metric]:
        """AI jobs (speech, denoising, enhancement) as each online node's heartbeat counts them."""
        running = GaugeMetricFamily("huiyi_ai_jobs_running", "AI jobs running on each online node", labels=["node"])
        finished = CounterMetricFamily(
            "huiyi_ai_jobs_finished",
            "AI jobs a node finished since it started, by kind and outcome (done, input, unavailable, internal)",
            labels=["node", "kind", "outcome"],
        )
        seconds = CounterMetricFamily(
            "huiyi_ai_job_duration_seconds",
            "Time a node spent on the AI jobs it finished since it started, by kind and outcome",
            labels=["node", "kind", "outcome"],
        )
        for node in self.snapshot.ai_online:
            running.add_metric([node["node_id"]], node.get("running_jobs", 0))
            for tally in node.get("jobs_finished", []):
                labels = [node["node_id"], tally["kind"], tally["outcome"]]
                finished.add_metric(labels, tally["count"])
                seconds.add_metric(labels, tally["seconds"])
        yield running
        yield finished
        yield seconds

    def _control(self) -> Iterator[Metric]:
        hub = self.app[HUB]
        sockets = sum(len(connections) for connections in hub.rooms.values())
        yield _gauge("huiyi_signaling_sockets", "Open signaling sockets on this node", sockets)
        yield _gauge("huiyi_signaling_rooms", "Meetings with a signaling socket on this node", len(hub.rooms))
        refusals = CounterMetricFamily(
            "huiyi_rate_limit_refusals", "Requests answered 429 by the rate limit, by operation", labels=["operation"]
        )
        for operation, count in sorted(self.app[LIMITER].refused.items()):
            refusals.add_metric([operation], count)
        yield refusals

    def _turn(self) -> Iterator[Metric]:
        counters = self.snapshot.turn
        yield _gauge("huiyi_turn_up", "1 when the TURN process answered this scrape", 1 if counters else 0)
        if not counters:
            return
        yield _gauge("huiyi_turn_allocations", "TURN allocations held now", counters["allocations"])
        families: dict[str, CounterMetricFamily] = {}
        for name, documentation, key, labels in TURN_TOTALS:
            family = families.get(name)
            if family is None:
                family = families[name] = CounterMetricFamily(name, documentation, labels=list(labels))
            family.add_metric(list(labels.values()), counters.get(key, 0))
        yield from families.values()

    def _work(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "huiyi_jobs",
            "Media jobs in the database (the whole deployment's), by kind and state",
            labels=["kind", "state"],
        )
        for kind, state, count in self.snapshot.jobs:
            jobs.add_metric([kind, state], count)
        yield jobs
        nodes = GaugeMetricFamily("huiyi_ai_nodes", "AI worker nodes known, by status", labels=["status"])
        for status in ("online", "offline"):
            nodes.add_metric([status], self.snapshot.ai_nodes[status])
        yield nodes
        yield from self._ai_jobs()
        if self.snapshot.webhooks_pending is not None:
            yield _gauge(
                "huiyi_webhook_deliveries_pending",
                "Webhook deliveries waiting to be made (the whole deployment's)",
                self.snapshot.webhooks_pending,
            )


def _gauge(name: str, documentation: str, value: Any) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: Any) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)
