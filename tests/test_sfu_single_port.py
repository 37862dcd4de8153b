"""Every connection's media on one UDP port (``[sfu] udp_port``): the port finds a packet's connection
by the server's ICE ufrag in a client's checks and then by the client's address, keeps its tables to
live connections (ICE restarts and departures included), and drops what names no connection, counted.
End to end: fifty aiortc viewers and a publisher in one meeting on a server process holding one UDP
socket, with strangers' packets sent at that socket while the media flows."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aioice import stun

from config import ConfigError, load_settings
from sfu.network import LOOPBACK, Network, SharedMediaProtocol, gather
from sfu.ports import open_listeners
from sfu.udpmux import SharedUdpPort
from tests.ice_checks import HELLO, check, check_for
from tests.rtc_clients import Participant, invite_code_of, join_meeting, make_meeting, make_user
from tests.server_process import ServerProcess, free_udp_port, run_cli, start_server
from tests.support import media_status, until

VIEWERS = 50


def udp_sockets(pid: int) -> list[tuple[str, int]]:
    """The UDP sockets a process holds, as (address, port), read from /proc."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, family in (("udp", socket.AF_INET), ("udp6", socket.AF_INET6)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] not in inodes:
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)  # the kernel's 32-bit words, each little-endian
            ordered = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.append((socket.inet_ntop(family, ordered), int(port, 16)))
    return found


class Client:
    """A plain UDP socket on loopback, sending what a client would and reading the answers."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()

    async def ask(self, data: bytes, port: int) -> stun.Message:
        self.sock.sendto(data, ("127.0.0.1", port))
        reply = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.sock, 1500), 5)
        return stun.parse_message(reply)

    def send(self, data: bytes, port: int) -> None:
        self.sock.sendto(data, ("127.0.0.1", port))

    def pending(self) -> bool:
        try:
            self.sock.recv(1500)
        except BlockingIOError:
            return False
        return True


@pytest.fixture
async def shared() -> AsyncIterator[tuple[Network, SharedUdpPort]]:
    network = await open_listeners(Network(bind=LOOPBACK.bind, udp_port=free_udp_port()))
    assert network.listeners is not None
    (port,) = network.listeners.ports
    assert isinstance(port, SharedUdpPort)
    yield network, port
    network.listeners.close()


# settings -------------------------------------------------------------------------------------------


def test_the_ports_are_read_from_the_environment_and_checked() -> None:
    sfu = load_settings(None, environ={"HUIYI_SFU_UDP_PORT": "7882", "HUIYI_SFU_TCP_PORT": "7881"}).sfu
    assert (sfu.udp_port, sfu.tcp_port) == (7882, 7881)
    defaults = load_settings(None, environ={}).sfu
    assert (defaults.udp_port, defaults.tcp_port) == (0, 0), "a port per connection and no TCP, as before"
    with pytest.raises(ConfigError, match=r"sfu\.udp_port"):
        load_settings(None, environ={"HUIYI_SFU_UDP_PORT": "70000"})
    with pytest.raises(ConfigError, match="udp_port shares one port"):
        load_settings(
            None, environ={"HUIYI_SFU_UDP_PORT": "7882", "HUIYI_SFU_PORT_MIN": "1", "HUIYI_SFU_PORT_MAX": "9"}
        )


def test_the_server_will_not_start_when_its_media_port_is_taken(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        env = {"HUIYI_SFU_BIND_ADDRESSES": "127.0.0.1", "HUIYI_SFU_UDP_PORT": str(port)}
        completed = run_cli("--data-dir", str(tmp_path), "--port", "0", env=env)
    assert completed.returncode == 2, completed.stderr
    assert f"sfu.udp_port: cannot listen on 127.0.0.1 port {port} (Address already in use)" in completed.stderr


# the demultiplexer ----------------------------------------------------------------------------------


async def test_checks_find_their_connection_by_ufrag_and_then_its_address(shared) -> None:
    network, port = shared
    first, second = await gather(network), await gather(network)
    assert [c.port for c in first.local_candidates] == [c.port for c in second.local_candidates] == [network.udp_port]
    assert first.local_username != second.local_username
    client, stranger = Client(), Client()
    try:
        answer = await client.ask(check_for(second), network.udp_port)
        assert answer.message_class == stun.Class.RESPONSE
        assert answer.attributes["XOR-MAPPED-ADDRESS"] == client.address
        assert port.by_address == {client.address: second._protocols[0]}
        before = time.monotonic()
        client.send(HELLO, network.udp_port)
        sent = time.monotonic()
        time.sleep(0.3)  # the event loop is busy elsewhere: the datagram waits in the port's socket
        await until(lambda: second._queue.qsize() == 1, "the client's DTLS to reach its connection")
        data, arrived = second._queue.get_nowait()
        assert data == HELLO and first._queue.empty()
        assert before - 0.002 <= arrived <= sent + 0.05, f"timed {arrived - sent:.3f} s after it was sent"

        # The right ufrag with a wrong password is answered as aioice answers it, and teaches nothing.
        refused = await stranger.ask(check(first.local_username, "x" * 22), network.udp_port)
        assert refused.message_class == stun.Class.ERROR and refused.attributes["ERROR-CODE"][0] == 401
        assert stranger.address not in port.by_address
        unrouted, malformed = port.unrouted, port.malformed
        stranger.send(check("nobody", "y" * 22), network.udp_port)  # no connection has that ufrag
        stranger.send(HELLO, network.udp_port)  # from an address no check came from
        stranger.send(b"", network.udp_port)
        stranger.send(b"\x00\x01\x00\x08garbage!", network.udp_port)  # STUN's first byte, but no STUN
        await until(lambda: (port.unrouted, port.malformed) == (unrouted + 2, malformed + 2), "the drops counted")
        assert not stranger.pending(), "a check for an unknown ufrag is not answered"
        assert first._queue.empty() and second._queue.empty()

        await second.close()
        assert port.by_address == {} and list(port.by_ufrag) == [first.local_username]
        client.send(HELLO, network.udp_port)
        await until(lambda: port.unrouted == unrouted + 3, "the departed client's packet dropped")
    finally:
        client.sock.close()
        stranger.sock.close()
        await first.close()
        await second.close()
    assert port.by_ufrag == {} and port.by_address == {} and port.transactions == {}


async def test_an_ice_restart_from_the_same_address_moves_it_to_the_new_connection(shared) -> None:
    network, port = shared
    old = await gather(network)
    client = Client()
    try:
        await client.ask(check_for(old), network.udp_port)
        fresh = await gather(network)  # gathered for the restart's answer
        assert (await client.ask(check_for(fresh), network.udp_port)).message_class == stun.Class.RESPONSE
        # A last consent check on the old connection is still answered, but the address stays moved.
        assert (await client.ask(check_for(old), network.udp_port)).message_class == stun.Class.RESPONSE
        (fresh_protocol,) = fresh._protocols
        assert isinstance(fresh_protocol, SharedMediaProtocol)
        assert port.by_address == {client.address: fresh_protocol}
        client.send(HELLO, network.udp_port)
        await until(lambda: fresh._queue.qsize() == 1, "the client's DTLS to reach the new connection")
        await old.close()
        assert port.by_address == {client.address: fresh_protocol}, "closing the old connection keeps the address"
        await fresh.close()
    finally:
        client.sock.close()
    assert port.by_ufrag == {} and port.by_address == {}


# end to end -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("single-port")
    env = {
        "HUIYI_RATE_LIMITS": "off",
        "HUIYI_SFU_BIND_ADDRESSES": "127.0.0.1",
        "HUIYI_SFU_UDP_PORT": str(free_udp_port()),
        "HUIYI_SIGNALING_MAX_SOCKETS_PER_USER": str(VIEWERS + 5),  # the viewers share an account
    }
    process = start_server("--data-dir", str(tmp / "data"), log=tmp / "server.log", env=env)
    yield process
    process.stop()


async def test_fifty_viewers_share_one_udp_socket_and_strangers_are_dropped(server, people) -> None:
    media_port = int(server.env["HUIYI_SFU_UDP_PORT"])
    token, user_id = make_user(server.url, "host")
    meeting_id = make_meeting(server.url, token)
    join_meeting(server.url, token, meeting_id)
    viewer_token, viewer_id = make_user(server.url, "viewer")
    join_meeting(server.url, viewer_token, meeting_id, invite_code_of(server.url, token, meeting_id))
    host = Participant(server.url, token, user_id, meeting_id)
    people.append(host)
    await host.connect()
    await host.publish(video=(160, 120), audio=False)
    viewers = [Participant(server.url, viewer_token, viewer_id, meeting_id) for _ in range(VIEWERS)]
    people.extend(viewers)
    await asyncio.gather(*(viewer.connect() for viewer in viewers))

    def frames() -> list[int]:
        return [(track.frames if (track := viewer.video_from(user_id)) else 0) for viewer in viewers]

    await until(lambda: min(frames()) >= 5, f"all {VIEWERS} viewers to decode the host's video", timeout=60)
    for pc in [host.publisher] + [viewer.subscriber for viewer in viewers]:
        assert pc is not None and pc.remoteDescription is not None
        candidates = [line for line in pc.remoteDescription.sdp.splitlines() if line.startswith("a=candidate:")]
        assert candidates and all(f" 127.0.0.1 {media_port} typ host" in line for line in candidates)
    assert udp_sockets(server.process.pid) == [("127.0.0.1", media_port)]
    status = await media_status(server)
    assert status["peers"] == VIEWERS + 1 and status["media_sockets"] == 1
    assert status["udp_connections"] == status["udp_addresses"] == VIEWERS + 1

    # Strangers' packets at the shared port: checks for no connection, checks with a connection's
    # ufrag but not its password, DTLS and RTP from nowhere known, and unreadable bytes.
    assert host.publisher.remoteDescription is not None
    ufrag = re.search(r"a=ice-ufrag:(\S+)", host.publisher.remoteDescription.sdp)
    assert ufrag is not None
    strangers = [Client() for _ in range(4)]
    try:
        for round_ in range(50):
            for stranger in strangers:
                stranger.send(check(f"nobody{round_}", "z" * 22), media_port)
                stranger.send(check(ufrag.group(1), "z" * 22), media_port)
                stranger.send(HELLO, media_port)
                stranger.send(bytes([0x80, 96]) + os.urandom(40), media_port)
                stranger.send(b"", media_port)
                stranger.send(b"\x01" + os.urandom(30), media_port)
            await asyncio.sleep(0.005)  # the clients' own media keeps its turn

        async def dropped() -> bool:
            # 600 and 400 were sent; a few may be lost on the way, as a full socket buffer loses them.
            counted = await media_status(server)
            return counted["shared_unrouted"] >= 540 and counted["shared_malformed"] >= 360

        await until(dropped, "the strangers' packets to be dropped and counted")
        assert status["udp_addresses"] == (await media_status(server))["udp_addresses"], "no stranger was learnt"
    finally:
        for stranger in strangers:
            stranger.sock.close()
    before = frames()
    await until(lambda: all(now >= then + 5 for now, then in zip(frames(), before, strict=True)), "media to go on")
    assert server.process.poll() is None and "Traceback" not in server.log.read_text()

    # Everyone leaves: the port forgets every connection and address, and keeps its one socket.
    await asyncio.gather(*(person.close() for person in people))

    async def forgotten() -> bool:
        status = await media_status(server)
        return status["peers"] == status["udp_connections"] == status["udp_addresses"] == 0

    await until(forgotten, "the port's tables to empty once everyone has left", timeout=30)
    assert udp_sockets(server.process.pid) == [("127.0.0.1", media_port)]
