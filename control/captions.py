"""Live captions, the control plane's half (behaviour: docs/ai.md#live-captions).

A meeting's host or a moderator switches captions on, in a language (and with a model, or the one
the registry picks for it), or off. The switch is a row, and every node hears of it on the bus:
each captions the audio of the meeting's participants whose media it holds, through a caption feed
on its media server (``sfu/captions.py``) and its own caption worker process (``ai/captions.py``).
Each utterance recognised on a node is kept in the meeting's transcript there (final ones) and
sent to the whole room as a ``caption`` message (partial ones too) through the hub, so every
node's sockets get it. The room hears captions went on or off as a server ``media-state``, and a
socket that joins while they are on hears it after its ``join``.

Captions reach the sockets of the room's participants only: a participant who left, was removed
or banned has no socket there any more, and the audio of one who left is no longer captioned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ai.captions import CaptionWorker
from ai.registry import Registry, Unavailable, choose
from config import Settings
from control.errors import ApiError, BusinessCode, not_found
from control.signaling.hub import SERVER, Hub, message
from control.store import Store
from control.store.captions import CaptionState, SwitchRefusal, SwitchRefused, TranscriptLine
from control.store.meetings import MeetingRecord
from sfu.pool import MediaServer

log = logging.getLogger("huiyi.captions")

CHANNEL = "captions"  # every node listens: captions switched on or off
TICK_SECONDS = 0.1  # how often idle workers and missed switches are looked at
SYNC_SECONDS = 5.0  # and the switches are read again this often (the bus may have lost one)
IDLE_WORKER_SECONDS = 30.0  # a worker with no stream to caption this long is stopped


def captions_unavailable(text: str) -> ApiError:
    return ApiError(503, text, code=BusinessCode.AI_UNAVAILABLE)


def iso_ms(stamp: float | datetime) -> str:
    """A moment as ISO 8601 UTC to the millisecond: captions are timed finer than the API's seconds."""
    moment = stamp if isinstance(stamp, datetime) else datetime.fromtimestamp(stamp, UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def state_announcement(state: CaptionState) -> dict[str, Any]:
    """The server's ``media-state`` about captions."""
    return {"captions": state.enabled, "caption_language": state.language, "caption_model_id": state.model_id}


def line_view(line: TranscriptLine) -> dict[str, Any]:
    return {
        "line_id": line.id,
        "user_id": line.user_id,
        "username": line.username,
        "nickname": line.nickname,
        "text": line.text,
        "language": line.language,
        "model_id": line.model_id,
        "started_at": iso_ms(line.started_at),
        "ended_at": iso_ms(line.ended_at),
    }


@dataclass
class _Speaker:
    """A captioned stream (audio track) and whose it is."""

    meeting_id: int
    user_id: int
    peer_id: str
    language: str
    username: str = ""
    nickname: str = ""


class _MeetingSink:
    """One meeting's feed into the node's worker, with the meeting's language and model."""

    def __init__(self, captioner: Captioner, state: CaptionState) -> None:
        self.captioner = captioner
        self.state = state
        self.frame = captioner.worker.frame

    def open(self, stream_id: str, user_id: int, peer_id: str) -> None:
        state = self.state
        self.captioner.speakers[stream_id] = _Speaker(state.meeting_id, user_id, peer_id, state.language)
        self.captioner.worker.open(stream_id, {"model_id": state.model_id, "language": state.language})

    def close(self, stream_id: str, flush: bool) -> None:
        self.captioner.worker.close(stream_id, flush)


class Captioner:
    """The node's part in every captioned meeting, and the switch the API offers."""

    def __init__(self, *, store: Store, hub: Hub, media: MediaServer, settings: Settings) -> None:
        self.store = store
        self.hub = hub
        self.media = media
        self.settings = settings
        self.worker = CaptionWorker(settings, self._on_worker)
        self.feeds: dict[int, _MeetingSink] = {}  # meetings captioned on this node, fed by its media
        self.speakers: dict[str, _Speaker] = {}  # by stream id, until their meeting's feed stops
        self._catalogue: Registry | None = None
        self._results: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping_worker: asyncio.Future[None] | None = None  # kept, not to be collected

    # lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.hub.listen(CHANNEL, self._on_event)
        await self._sync()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._tick_forever()), loop.create_task(self._deliver_forever())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for meeting_id in list(self.feeds):
            self._stop_here(meeting_id)
        await self.worker.stop()
        if self._stopping_worker is not None:
            await self._stopping_worker

    # operations ---------------------------------------------------------------------------------

    def model_for(self, language: str, model_id: str | None) -> str:
        """The recognition model this node's worker would caption ``language`` with; 503 / 4001
        naming what to install when there is none."""
        if self._catalogue is None:
            ai = self.settings.ai
            model_dir = Path(ai.model_dir) if ai.model_dir else None
            self._catalogue = Registry(model_dir, self.settings.server.data_dir / "ai-cache")
        else:
            self._catalogue.refresh()
        try:
            return str(choose(self._catalogue.describe(), "recognition", language, model_id)["model_id"])
        except Unavailable as exc:
            raise captions_unavailable(str(exc)) from None

    async def switch(
        self, meeting: MeetingRecord, user_id: int, enabled: bool, language: str, model_id: str | None
    ) -> CaptionState:
        """Captions on (in ``language``, with ``model_id`` or the one chosen) or off."""
        if enabled:
            if not self.settings.captions.enabled:
                raise captions_unavailable("Live captions are switched off on this server ([captions] enabled)")
            model_id = await asyncio.to_thread(self.model_for, language, model_id)
        else:
            current = await self.store.captions.state(meeting.id)
            if current is not None:
                language, model_id = current.language, current.model_id
        try:
            state = await self.store.captions.switch(
                meeting.id, enabled=enabled, language=language, model_id=model_id or "", changed_by=user_id
            )
        except SwitchRefused as refused:
            if refused.reason is SwitchRefusal.GONE:
                raise not_found("Meeting not found", BusinessCode.MEETING_NOT_FOUND) from None
            raise ApiError(400, "Meeting is already over", code=BusinessCode.MEETING_ENDED) from None
        log.info("user %s switched captions %s in meeting %s", user_id, "on" if enabled else "off", meeting.id)
        await self._announce(state)
        return state

    async def stop_in(self, meeting_id: int) -> None:
        """The meeting is over: its captions, if on, go off everywhere."""
        state = await self.store.captions.switch_off(meeting_id)
        if state is not None:
            await self._announce(state)

    async def _announce(self, state: CaptionState) -> None:
        event = {"event": "switch", "meeting_id": state.meeting_id, "enabled": state.enabled}
        await self.hub.bus.publish(CHANNEL, event)
        await self.hub.broadcast(message("media-state", state.meeting_id, SERVER, state_announcement(state)))

    # this node's feeds --------------------------------------------------------------------------

    async def _on_event(self, event: dict[str, Any]) -> None:
        meeting_id = int(event["meeting_id"])
        if not event["enabled"]:
            self._stop_here(meeting_id)
            return
        state = await self.store.captions.state(meeting_id)  # the row has the language and model
        if state is not None and state.enabled:
            self._caption_here(state)

    def _caption_here(self, state: CaptionState) -> None:
        sink = self.feeds.get(state.meeting_id)
        if sink is not None:
            if (sink.state.language, sink.state.model_id) == (
                state.language,
                state.model_id,
            ):
                return
            self._stop_here(state.meeting_id)  # on again in another language: start over
        sink = self.feeds[state.meeting_id] = _MeetingSink(self, state)
        self.media.start_captions(state.meeting_id, sink)
        log.info("captioning meeting %s here (%s, %s)", state.meeting_id, state.language, state.model_id)

    def _stop_here(self, meeting_id: int) -> None:
        if self.feeds.pop(meeting_id, None) is None:
            return
        self.media.stop_captions(meeting_id)
        for stream_id in [s for s, speaker in self.speakers.items() if speaker.meeting_id == meeting_id]:
            del self.speakers[stream_id]
        log.info("stopped captioning meeting %s here", meeting_id)
        if not self.feeds:  # nothing left to caption on this node: the worker's memory goes back
            self._stop_worker()

    def _stop_worker(self) -> None:
        if self.worker.pid is not None:
            self._stopping_worker = self.worker.stop()

    async def _sync(self) -> None:
        """Follow the rows where the bus said nothing (it lost messages while Redis was away)."""
        enabled = {state.meeting_id: state for state in await self.store.captions.enabled()}
        for meeting_id in [m for m in self.feeds if m not in enabled]:
            self._stop_here(meeting_id)
        for state in enabled.values():
            self._caption_here(state)

    async def _tick_forever(self) -> None:
        synced = time.monotonic()
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                idle = time.monotonic() - self.worker.idle_since
                if self.worker.pid is not None and not self.worker.streams and idle > IDLE_WORKER_SECONDS:
                    self._stop_worker()
                if time.monotonic() - synced > SYNC_SECONDS:
                    synced = time.monotonic()
                    await self._sync()
            except Exception:
                log.exception("caption feeds: tick failed; trying again")

    # results ------------------------------------------------------------------------------------

    def _on_worker(self, kind: str, payload: dict[str, Any]) -> None:
        if kind == "caption":
            self._results.put_nowait(payload)
        elif kind == "error":
            log.warning("captions: %s", payload.get("error"))

    async def _deliver_forever(self) -> None:
        """One result after another, so a stream's partials and finals reach the room in order."""
        while True:
            result = await self._results.get()
            try:
                await self._deliver(result)
            except Exception:
                log.exception("captions: a result could not be delivered")

    async def _deliver(self, result: dict[str, Any]) -> None:
        speaker = self.speakers.get(result["stream_id"])
        if speaker is None or speaker.meeting_id not in self.feeds or not result["text"]:
            return  # captions went off meanwhile, or nothing was heard
        caption_id = None
        if result["final"]:
            line = await self.store.captions.add_line(
                meeting_id=speaker.meeting_id,
                user_id=speaker.user_id,
                text=result["text"],
                language=speaker.language,
                model_id=result["model_id"],
                started_at=datetime.fromtimestamp(result["start"], UTC),
                ended_at=datetime.fromtimestamp(result["end"], UTC),
            )
            caption_id, speaker.username, speaker.nickname = line.id, line.username, line.nickname
        elif not speaker.username:
            user = await self.store.users.get(speaker.user_id)
            if user is not None:
                speaker.username, speaker.nickname = user.username, user.nickname
        data = {
            "caption_id": caption_id,
            "utterance_id": f"{result['stream_id']}-{result['number']}",
            "final": result["final"],
            "user_id": speaker.user_id,
            "username": speaker.username,
            "nickname": speaker.nickname,
            "peer_id": speaker.peer_id,
            "text": result["text"],
            "language": speaker.language,
            "model_id": result["model_id"],
            "started_at": iso_ms(result["start"]),
            "ended_at": iso_ms(result["end"]),
        }
        if speaker.meeting_id not in self.feeds:
            return  # switched off while the line was kept
        await self.hub.broadcast(message("caption", speaker.meeting_id, SERVER, data))
