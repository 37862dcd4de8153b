"""Janus (its VideoRoom plugin) as a target of the harness: a production C SFU loaded by the same
synthetic clients, the same clip and the same measurements as huiyi, so every table can carry it
beside ours.

``janus_command`` writes a configuration of its own (the HTTP transport and the VideoRoom plugin
only, ICE on the harness namespace's JANUS_LINK only, whose address is 127.0.0.2: see
``bench.netns`` for why Janus needs that namespace) and gives the command that runs Janus on it.
``JanusClient`` is ``SyntheticClient`` speaking Janus's HTTP API instead of huiyi's signaling: a
publisher joins its room as a feed and publishes the clip (three simulcast layers, by RID, like a
browser); a subscriber waits for the room's publishers and subscribes to each of them, on the top
layer, as huiyi's subscribers get it."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import random
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench import netns
from bench.client import SyntheticClient, _publisher_offer
from sfu import sdp
from sfu.transport import MediaTransport

JOIN_TIMEOUT = 20.0
ROOM_BASE = 1000  # room numbers of the harness's rooms: ROOM_BASE + the bench room's number
TOP_SUBSTREAM = 2  # VideoRoom's simulcast substreams: 0 low, 1 medium, 2 high
DISABLED_TRANSPORTS = ("libjanus_websockets.so", "libjanus_pfunix.so", "libjanus_mqtt.so")
DISABLED_TRANSPORTS += ("libjanus_rabbitmq.so", "libjanus_nanomsg.so")


def janus_command(port: int, folder: Path, debug_level: int = 3, shaped_link: str | None = None) -> list[str]:
    """Write Janus's configuration into ``folder`` and return the command that starts it: its HTTP
    API on 127.0.0.1:``port`` and media on 127.0.0.2, nothing else loaded. With ``shaped_link`` (the
    near end of the harness's shaped link, bench/shaped.py) its HTTP API listens on every address of
    the namespace and its media is offered on that link too, for the subscribers behind it."""
    program = shutil.which("janus")
    if program is None:
        raise RuntimeError("janus is not installed (apt-get install janus)")
    if not netns.ready():
        raise RuntimeError("Janus runs only in the harness's network namespace (see bench/netns.py)")
    libraries = sorted(glob.glob("/usr/lib/*/janus/plugins"))
    if not libraries:
        raise RuntimeError("janus's plugins folder is not under /usr/lib/*/janus/")
    plugins = Path(libraries[0])
    other_plugins = sorted(path.name for path in plugins.glob("*.so") if path.name != "libjanus_videoroom.so")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "janus.jcfg").write_text(
        f"""general: {{
    configs_folder = "{folder}"
    plugins_folder = "{plugins}"
    transports_folder = "{plugins.parent / "transports"}"
    events_folder = "{plugins.parent / "events"}"
    loggers_folder = "{plugins.parent / "loggers"}"
    debug_level = {debug_level}
    session_timeout = 60
}}
plugins: {{ disable = "{",".join(other_plugins)}" }}
transports: {{ disable = "{",".join(DISABLED_TRANSPORTS)}" }}
events: {{ broadcast = false }}
loggers: {{ disable = "libjanus_jsonlog.so" }}
media: {{ rtp_port_range = "20000-60000" }}
nat: {{
    ignore_mdns = true
    ice_enforce_list = "{",".join([netns.JANUS_LINK, *([shaped_link] if shaped_link else [])])}"
}}
"""
    )
    (folder / "janus.transport.http.jcfg").write_text(
        f"""general: {{
    json = "compact"
    base_path = "/janus"
    http = true
    port = {port}
    ip = "{"0.0.0.0" if shaped_link else "127.0.0.1"}"
    https = false
}}
admin: {{ admin_http = false }}
"""
    )
    (folder / "janus.plugin.videoroom.jcfg").write_text("general: { }\n")
    # Janus keeps the harness's namespace alive: it ends with the harness, however the harness ends.
    setpriv = shutil.which("setpriv")
    guard = [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []
    return [
        *guard,
        program,
        "--configs-folder",
        str(folder),
        "--config",
        str(folder / "janus.jcfg"),
        "--disable-colors",
    ]


class JanusError(ConnectionError):
    """Janus refused a request: its error code and reason."""


class JanusClient(SyntheticClient):
    """A synthetic participant of one Janus VideoRoom room (see the module's docstring). The room
    is ``meeting_id`` + ROOM_BASE; the first publisher to arrive creates it."""

    def __init__(self, *args: Any, publishers: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.room = ROOM_BASE + self.meeting_id
        self.expected_publishers = publishers
        self.session = 0
        self.handle = 0
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    # the API --------------------------------------------------------------------------------------

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self.http is not None
        async with self.http.post(
            f"{self.base_url}/janus{path}", json={**body, "transaction": secrets.token_hex(6)}
        ) as r:
            reply = await r.json(content_type=None)
        if reply.get("janus") == "error":
            error = reply.get("error") or {}
            raise JanusError(f"janus {error.get('code')}: {error.get('reason')}")
        return reply

    async def _request(self, body: dict[str, Any], jsep: dict[str, Any] | None = None) -> dict[str, Any]:
        """A VideoRoom request answered at once (create, listparticipants): the plugin's data."""
        message: dict[str, Any] = {"janus": "message", "body": body, **({"jsep": jsep} if jsep else {})}
        reply = await self._post(f"/{self.session}/{self.handle}", message)
        data = ((reply.get("plugindata") or {}).get("data")) or {}
        if "error_code" in data:
            raise JanusError(f"videoroom {data['error_code']}: {data.get('error')}")
        return data

    async def _event(self, wanted: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The next plugin event whose ``videoroom`` field is ``wanted`` (and its JSEP, if any)."""
        while True:
            event = await asyncio.wait_for(self.events.get(), JOIN_TIMEOUT)
            data = ((event.get("plugindata") or {}).get("data")) or {}
            if "error_code" in data:
                raise JanusError(f"videoroom {data['error_code']}: {data.get('error')}")
            if data.get("videoroom") == wanted:
                return data, event.get("jsep")

    async def _candidates_done(self) -> None:
        """Every candidate of ours is in the SDP: Janus, which expects trickling, waits for this."""
        await self._post(f"/{self.session}/{self.handle}", {"janus": "trickle", "candidate": {"completed": True}})

    async def _poll(self) -> None:
        """Janus's long poll: its events, and the session's keep-alive."""
        assert self.http is not None
        while True:
            async with self.http.get(f"{self.base_url}/janus/{self.session}", params={"maxev": "10"}) as response:
                reply = await response.json(content_type=None)
            for event in reply if isinstance(reply, list) else [reply]:
                if event.get("janus") == "event":
                    await self.events.put(event)
                elif event.get("janus") in ("hangup", "detached"):
                    self.result.errors.append(f"janus {event['janus']}: {event.get('reason')}")

    async def connect(self) -> None:
        self.http = aiohttp.ClientSession()
        self.result.opened_ns = time.monotonic_ns()
        self.session = (await self._post("", {"janus": "create"}))["data"]["id"]
        self.tasks.append(asyncio.get_running_loop().create_task(self._poll()))
        self.handle = (await self._post(f"/{self.session}", {"janus": "attach", "plugin": "janus.plugin.videoroom"}))[
            "data"
        ]["id"]
        if self.clip is None:
            await self._subscribe()

    # publishing -----------------------------------------------------------------------------------

    async def publish(self) -> None:
        assert self.clip is not None
        create = {"request": "create", "room": self.room, "publishers": 16, "videocodec": "vp8"}
        create |= {"audiocodec": "opus", "bitrate": 0, "permanent": False}
        try:
            await self._request(create)
        except JanusError as error:
            if "427" not in str(error):  # the room exists already: another publisher made it
                raise
        await self._request({"request": "join", "ptype": "publisher", "room": self.room, "id": self.user_id})
        await self._event("joined")
        connection = await self._gather(controlling=True)
        self.publisher = MediaTransport(connection, self.certificate, self._ignore, self._on_publisher_rtcp)
        local = self.publisher.local_description("actpass")
        self.layers = self._video_layers()
        offer = _publisher_offer(local, self.layers, self.simulcast, audio_ssrc := random.getrandbits(32) or 3)
        # Janus takes the first RID listed for the top layer unless told the order; ours lists l, m, h.
        jsep = {"type": "offer", "sdp": offer, "rid_order": "lmh"}
        await self._request({"request": "publish", "audio": True, "video": True}, jsep)
        await self._candidates_done()
        _, jsep = await self._event("event")
        if jsep is None:
            raise JanusError("janus answered the publish without an SDP answer")
        answer = sdp.parse(jsep["sdp"])
        ufrag, password = answer.ice_credentials()
        role = "client" if answer.dtls_setup() in ("passive", "actpass") else "server"
        await self.publisher.establish(ufrag, password, answer.all_candidates(), answer.dtls_fingerprints(), role)
        self._settled(self.publisher)
        self.send_media = self.publisher.send_rtp
        self.tasks.append(asyncio.get_running_loop().create_task(self._replay(audio_ssrc)))

    # subscribing ----------------------------------------------------------------------------------

    async def _subscribe(self) -> None:
        """Wait for the room's publishers, then take each one's audio and top video layer."""
        feeds: list[int] = []
        deadline = asyncio.get_running_loop().time() + JOIN_TIMEOUT
        while len(feeds) < self.expected_publishers:
            if asyncio.get_running_loop().time() > deadline:
                raise JanusError(f"{len(feeds)} of {self.expected_publishers} publishers in room {self.room}")
            try:
                listed = await self._request({"request": "listparticipants", "room": self.room})
            except JanusError as error:
                if "426" not in str(error):  # no such room yet: its first publisher has not come
                    raise
                listed = {}
            feeds = [person["id"] for person in listed.get("participants", []) if person.get("publisher")]
            if len(feeds) < self.expected_publishers:
                await asyncio.sleep(0.1)
        streams = [{"feed": feed, "substream": TOP_SUBSTREAM} for feed in feeds]
        join = {"request": "join", "ptype": "subscriber", "room": self.room, "streams": streams}
        await self._request(join)
        _, jsep = await self._event("attached")
        if jsep is None:
            raise JanusError("janus attached the subscriber without an SDP offer")
        offer = sdp.parse(jsep["sdp"])
        for section in offer.sections:
            for ssrc in section.ssrcs:
                self.ssrc_mids[ssrc] = section.mid
        # Janus offers as a full ICE agent: the answering side here is the controlled one.
        connection = await self._gather(controlling=False)
        self.subscriber = MediaTransport(connection, self.certificate, self._on_media, self._ignore)
        local = self.subscriber.local_description("active")
        answer = {"type": "answer", "sdp": self._answer(offer, local)}
        await self._request({"request": "start"}, answer)
        await self._candidates_done()
        ufrag, password = offer.ice_credentials()
        await self.subscriber.establish(ufrag, password, offer.all_candidates(), offer.dtls_fingerprints(), "client")
        self._settled(self.subscriber)
        self.tasks.append(asyncio.get_running_loop().create_task(self._report()))

    async def close(self) -> None:
        if self.http is not None and self.session:
            # The run is over; should this fail, Janus times the session out by itself.
            with contextlib.suppress(aiohttp.ClientError, JanusError, TimeoutError):
                await asyncio.wait_for(self._post(f"/{self.session}", {"janus": "destroy"}), 5)
        await super().close()
