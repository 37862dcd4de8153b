"""A participant as the media server sees it: one signaling session, a publisher and a subscriber
connection, and what the participant asked to receive."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from sfu.negotiation import SCALABLE
from sfu.publisher import PublisherSide
from sfu.subscriber import SubscriberSide
from sfu.track import PublishedTrack

if TYPE_CHECKING:
    from sfu.room import Room
    from sfu.server import Sfu

log = logging.getLogger("huiyi.sfu.peer")

Signal = Callable[[str, dict[str, Any]], None]


class Peer:
    def __init__(self, sfu: Sfu, room: Room, peer_id: str, user_id: int, signal: Signal) -> None:
        self.sfu = sfu
        self.room = room
        self.id = peer_id
        self.user_id = user_id
        self.signal = signal
        self.sdp_session_id = random.getrandbits(62)
        self.tasks: set[asyncio.Task[Any]] = set()
        self.layer_preference: dict[str, str] = {}  # track id -> name of the best layer wanted
        self.default_layer: str | None = None  # for tracks without their own preference
        self.max_bitrate: int | None = None
        self.muted: dict[str, bool] = {}  # kind -> muted server-side (by a host or the peer)
        # The video codecs its own publisher offer listed, once it sent one: a client that cannot send
        # VP9 or AV1 (aiortc) cannot receive it either, and fails a whole offer that has a section it
        # cannot take. None: not known yet (a browser, which decodes both, is assumed). Only VP9 and
        # AV1 are held back on this ground: a client may well offer to send less than it receives
        # (H.264 only, say).
        self.video_codecs: frozenset[str] | None = None
        self.publisher = PublisherSide(self)
        self.subscriber = SubscriberSide(self)
        self.closed = False
        self.joined_at = time.monotonic()
        self.awaiting_media = True  # until the first packet is forwarded to it (its join time)

    def decodes(self, track: PublishedTrack) -> bool:
        name = track.codec.name
        return name not in SCALABLE or self.video_codecs is None or name in self.video_codecs

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run peer work in the background; everything spawned is cancelled when the peer goes."""
        task = asyncio.get_running_loop().create_task(self._guard(work))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        # Work cancelled before it began (the peer left at once) is closed, not left never awaited.
        task.add_done_callback(lambda _: work.close())
        return task

    async def _guard(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("peer %s: background work failed", self.id)

    # preferences --------------------------------------------------------------------------------

    def preferred_layer(self, track: PublishedTrack) -> int:
        wanted = self.layer_preference.get(track.id, self.default_layer)
        return track.rung_count - 1 if wanted is None else self._index_for(track, wanted)

    def set_layer(self, layer_name: str, track_id: str | None) -> None:
        if track_id is None:
            self.default_layer = layer_name
            self.layer_preference.clear()
        else:
            self.layer_preference[track_id] = layer_name
        for down in self.subscriber.downtracks.values():
            if track_id is None or down.track.id == track_id:
                down.preferred_layer = self.preferred_layer(down.track)
                down.choose_layer()

    @staticmethod
    def _index_for(track: PublishedTrack, layer_name: str) -> int:
        """A name's layer on this track; a two-layer track's "medium" is its low one."""
        named = track.rung_named(layer_name)
        if named is not None:
            return named
        return {"low": 0, "medium": 0}.get(layer_name, track.rung_count - 1)

    def set_max_bitrate(self, bitrate: int | None) -> None:
        self.max_bitrate = bitrate
        for down in self.subscriber.downtracks.values():
            down.max_bitrate = bitrate
            down.choose_layer()

    def set_muted(self, kind: str, muted: bool) -> None:
        self.muted[kind] = muted
        for track in self.publisher.tracks.values():
            if track.kind == kind:
                track.muted = muted
                for down in track.downtracks:
                    down.choose_layer()

    # lifecycle ----------------------------------------------------------------------------------

    def on_transport_lost(self, which: str) -> None:
        """A connection failed (ICE gave up, consent expired, or silence): what it carried is withdrawn.
        The client reconnects with a new signaling session to get media again."""
        if which == "publisher":
            self.publisher.close_tracks()
        else:
            self.subscriber.detach()

    def _reap_silent(self, now: float) -> None:
        """A connected client sends RTCP at least every few seconds (and ICE consent checks every 5 s);
        ``sfu.silence_seconds`` without a packet that decrypts means it is gone, sooner than aioice's
        consent expiry (~30 s) would tell."""
        limit = self.sfu.settings.silence_seconds
        for which, side in (("publisher", self.publisher), ("subscriber", self.subscriber)):
            transport = side.transport
            if transport is None or side.state != "connected":
                continue
            if now - transport.stats.last_heard > limit:
                log.info("peer %s: nothing heard on the %s connection for %.0f s; closing it", self.id, which, limit)
                side.state = "failed"
                self.spawn(transport.close())
                self.on_transport_lost(which)

    def _note_first_media(self) -> None:
        """Tell how long this peer waited for its first media, once (read from the down-tracks,
        which note when they first forwarded, so nothing is added per packet)."""
        started = [down.first_sent_at for down in self.subscriber.downtracks.values() if down.sent_any]
        if started:
            self.awaiting_media = False
            self.sfu.events.media_flowing(self, max(0.0, min(started) - self.joined_at))

    def tick(self, now: float, full: bool) -> None:
        if self.awaiting_media:
            self._note_first_media()
        self.subscriber.review_layers(now)
        if full:
            self._reap_silent(now)
            self.publisher.report(now)
            self.subscriber.report(now)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in list(self.tasks):
            task.cancel()
        await self.publisher.close()
        await self.subscriber.close()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
