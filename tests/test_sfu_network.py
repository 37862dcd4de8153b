"""Where the SFU's media goes: the ``[sfu]`` address and port settings, checked in the loader, in the
candidates the server gathers, and end to end with media flowing over 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aioice import stun
from aiortc import RTCPeerConnection

from config import ConfigError, load_settings
from sfu.network import LOOPBACK, Network, NoMediaPort, gather
from tests.rtc_clients import PatternVideoTrack, connect_user
from tests.server_process import ServerProcess, run_cli, start_server
from tests.support import until

LOOPBACK_ENV = {"HUIYI_RATE_LIMITS": "off", "HUIYI_SFU_BIND_ADDRESSES": "127.0.0.1"}


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def free_port_pair(addresses: tuple[str, ...]) -> int:
    """A port P such that P and P + 1 are free on every address right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            low = probe.getsockname()[1]
        try:
            with contextlib.ExitStack() as held:
                for address in addresses:
                    for port in (low, low + 1):
                        family = socket.AF_INET6 if ":" in address else socket.AF_INET
                        held.enter_context(socket.socket(family, socket.SOCK_DGRAM)).bind((address, port))
            return low
        except OSError:
            continue
    raise AssertionError("no two consecutive free UDP ports found")


# settings -------------------------------------------------------------------------------------------


def test_addresses_and_port_range_are_read_from_the_environment() -> None:
    sfu = load_settings(
        None,
        environ={
            "HUIYI_SFU_BIND_ADDRESSES": "127.0.0.1, ::1",
            "HUIYI_SFU_ANNOUNCE_ADDRESSES": "203.0.113.9,2001:db8::9",
            "HUIYI_SFU_PORT_MIN": "40000",
            "HUIYI_SFU_PORT_MAX": "40099",
        },
    ).sfu
    assert sfu.bind_addresses == ["127.0.0.1", "::1"] and sfu.announce_addresses == ["203.0.113.9", "2001:db8::9"]
    assert (sfu.port_min, sfu.port_max) == (40000, 40099)
    defaults = load_settings(None, environ={}).sfu
    assert defaults.bind_addresses == [] and defaults.announce_addresses == [] and defaults.port_min == 0


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"HUIYI_SFU_BIND_ADDRESSES": "localhost"}, r"sfu\.bind_addresses: .*'localhost' is not an IPv4 or IPv6"),
        ({"HUIYI_SFU_ANNOUNCE_ADDRESSES": "1.2.3"}, r"sfu\.announce_addresses: .*'1.2.3'"),
        ({"HUIYI_SFU_PORT_MIN": "50000", "HUIYI_SFU_PORT_MAX": "40000"}, r"sfu: .*port_min and port_max"),
        ({"HUIYI_SFU_PORT_MIN": "50000"}, r"sfu: .*port_min and port_max"),
        ({"HUIYI_SFU_PORT_MAX": "70000"}, r"sfu\.port_max"),
        ({"HUIYI_SFU_BIND_ADDRESSES": "0.0.0.0"}, r"bind_addresses: 0\.0\.0\.0 needs announce_addresses"),
        (
            {"HUIYI_SFU_BIND_ADDRESSES": "::1", "HUIYI_SFU_ANNOUNCE_ADDRESSES": "203.0.113.9"},
            r"bind_addresses: ::1 has no announce_addresses entry of its IP version",
        ),
        ({"HUIYI_SFU_ANNOUNCE_ADDRESSES": "0.0.0.0"}, r"announce_addresses: 0\.0\.0\.0 cannot be announced"),
    ],
)
def test_bad_addresses_and_ranges_are_refused_naming_the_setting(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(None, environ=environ)


def test_the_server_refuses_to_start_with_a_bad_media_address(tmp_path: Path) -> None:
    completed = run_cli("--data-dir", str(tmp_path), env={"HUIYI_SFU_BIND_ADDRESSES": "127.0.0.1,not-an-ip"})
    assert completed.returncode == 2, completed.stderr
    assert "sfu.bind_addresses" in completed.stderr and "not-an-ip" in completed.stderr


# gathering ------------------------------------------------------------------------------------------


async def test_candidates_use_the_configured_addresses_and_port_range() -> None:
    bind = ("127.0.0.1", "::1") if has_ipv6_loopback() else ("127.0.0.1",)
    low = free_port_pair(bind)
    network = Network(bind=bind, port_min=low, port_max=low + 1)
    first, second = await gather(network), await gather(network)
    try:
        for connection in (first, second):
            hosts = [candidate.host for candidate in connection.local_candidates]
            assert sorted(hosts) == sorted(bind)
            assert all(low <= candidate.port <= low + 1 for candidate in connection.local_candidates)
            bound = {protocol.transport.get_extra_info("sockname")[0] for protocol in connection._protocols}
            assert bound == set(bind)
        ports = {c.port for c in first.local_candidates if c.host == "127.0.0.1"}
        ports |= {c.port for c in second.local_candidates if c.host == "127.0.0.1"}
        assert ports == {low, low + 1}, "two connections take the two ports of the range"
        with pytest.raises(NoMediaPort):
            await gather(Network(bind=("127.0.0.1",), port_min=low, port_max=low + 1))
    finally:
        await first.close()
        await second.close()


async def test_announced_addresses_replace_the_bound_ones_in_candidates() -> None:
    connection = await gather(Network(bind=("127.0.0.1",), announce=("127.0.0.2", "2001:db8::7")))
    try:
        (candidate,) = connection.local_candidates  # the IPv6 address has no IPv6 socket to stand for
        assert candidate.host == "127.0.0.2"
        (protocol,) = connection._protocols
        assert protocol.transport.get_extra_info("sockname") == ("127.0.0.1", candidate.port)
    finally:
        await connection.close()


async def test_a_socket_with_nothing_to_announce_for_its_ip_version_is_not_kept() -> None:
    if not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    connection = await gather(Network(bind=("127.0.0.1", "::1"), announce=("127.0.0.2",)))
    try:
        assert [candidate.host for candidate in connection.local_candidates] == ["127.0.0.2"]
        assert [p.transport.get_extra_info("sockname")[0] for p in connection._protocols] == ["127.0.0.1"]
    finally:
        await connection.close()


async def test_by_default_every_non_loopback_interface_is_used() -> None:
    if not Network().addresses():
        pytest.skip("this machine has no non-loopback interface")
    connection = await gather(Network())
    try:
        hosts = [ipaddress.ip_address(candidate.host) for candidate in connection.local_candidates]
        assert not any(host.is_loopback for host in hosts)
    finally:
        await connection.close()


BUSY_LOOP = 0.3  # seconds the event loop is held up while a datagram waits to be read


async def test_media_is_taken_only_from_addresses_whose_checks_authenticated() -> None:
    """A client may finish ICE and send its DTLS hello before the server has read its answer (the
    server answers checks at once): that hello is kept; the same bytes from anyone else are not. It
    is timed as it reached the machine, however long it then waited for a busy loop to read it."""
    connection = await gather(LOOPBACK)
    (protocol,) = connection._protocols
    server_port = connection.local_candidates[0].port
    client, stranger = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
    try:
        for sock in (client, stranger):
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
        check = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        check.attributes["USERNAME"] = f"{connection.local_username}:abcd"
        check.attributes["PRIORITY"] = 1853824767
        check.attributes["ICE-CONTROLLING"] = 1
        check.attributes["USE-CANDIDATE"] = None
        check.add_message_integrity(connection.local_password.encode())
        check.add_fingerprint()
        hello = bytes([22, 0xFE, 0xFD]) + bytes(40)
        stranger.sendto(hello, ("127.0.0.1", server_port))
        client.sendto(bytes(check), ("127.0.0.1", server_port))
        reply = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(client, 1500), 5)
        response = stun.parse_message(reply)  # answered before the client is known
        assert response.message_class == stun.Class.RESPONSE
        before = time.monotonic()
        client.sendto(hello, ("127.0.0.1", server_port))
        sent = time.monotonic()
        time.sleep(BUSY_LOOP)  # the event loop is busy elsewhere: the hello waits in the socket
        await until(lambda: connection._queue.qsize() == 1, "the client's hello to be queued", 5)
        assert protocol.dropped == 1, "the stranger's hello was dropped"
        data, arrived = connection._queue.get_nowait()
        assert data == hello
        assert before - 0.002 <= arrived <= sent + 0.05, f"timed {arrived - sent:.3f} s after it was sent"
    finally:
        client.close()
        stranger.close()
        await connection.close()


# end to end -----------------------------------------------------------------------------------------


@pytest.fixture
def loopback_server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = start_server("--data-dir", str(tmp_path / "data"), log=tmp_path / "server.log", env=LOOPBACK_ENV)
    yield process
    process.stop()


def sdp_candidate_hosts(sdp: str) -> set[str]:
    return {line.split()[4] for line in sdp.splitlines() if line.startswith("a=candidate:")}


def local_and_selected(pc: RTCPeerConnection) -> tuple[set[str], tuple[str, str] | None]:
    """The hosts of a client connection's own candidates, and its selected pair (local, remote host)."""
    ice = pc.getTransceivers()[0].sender.transport.transport
    hosts = {candidate.ip for candidate in ice.iceGatherer.getLocalCandidates()}
    pair = ice._connection._nominated.get(1)
    return hosts, (pair.local_candidate.host, pair.remote_addr[0]) if pair is not None else None


async def test_media_flows_with_the_sfu_bound_to_loopback_only(loopback_server, people) -> None:
    host = await connect_user(loopback_server.url, "host", people=people)
    await host.publish(video=(160, 120), audio=False)
    viewer = await connect_user(loopback_server.url, "viewer", host, people)
    await until(lambda: (t := viewer.video_from(host.user_id)) is not None and t.frames >= 5, "the viewer's frames", 20)
    assert host.publisher.remoteDescription is not None and viewer.subscriber is not None
    assert sdp_candidate_hosts(host.publisher.remoteDescription.sdp) == {"127.0.0.1"}
    assert sdp_candidate_hosts(viewer.subscriber.remoteDescription.sdp) == {"127.0.0.1"}
    for pc in (host.publisher, viewer.subscriber):
        hosts, selected = local_and_selected(pc)
        assert hosts == {"127.0.0.1"} and selected == ("127.0.0.1", "127.0.0.1")


@pytest.fixture
def announcing_server(tmp_path: Path) -> Iterator[ServerProcess]:
    env = {**LOOPBACK_ENV, "HUIYI_SFU_ANNOUNCE_ADDRESSES": "127.0.0.2"}
    process = start_server("--data-dir", str(tmp_path / "data"), log=tmp_path / "server.log", env=env)
    yield process
    process.stop()


async def test_announced_addresses_are_what_clients_are_told(announcing_server, people) -> None:
    host = await connect_user(announcing_server.url, "host", people=people)
    await host.publish(video=(160, 120), audio=False)
    assert host.publisher.remoteDescription is not None
    assert sdp_candidate_hosts(host.publisher.remoteDescription.sdp) == {"127.0.0.2"}


async def test_when_the_port_range_is_used_up_clients_are_told(tmp_path: Path, people) -> None:
    port = free_port_pair(("127.0.0.1",))
    env = {**LOOPBACK_ENV, "HUIYI_SFU_PORT_MIN": str(port), "HUIYI_SFU_PORT_MAX": str(port)}
    server = start_server("--data-dir", str(tmp_path / "data"), log=tmp_path / "server.log", env=env)
    try:
        host = await connect_user(server.url, "host", people=people)
        await host.publish(video=(160, 120), audio=False)
        assert host.publisher.remoteDescription is not None
        assert f" 127.0.0.1 {port} typ host" in host.publisher.remoteDescription.sdp
        viewer = await connect_user(server.url, "viewer", host, people)

        def refusals() -> list[dict]:
            return [error for error in viewer.errors if error.get("code") == 503]

        await until(lambda: len(refusals()) == 1, "the viewer to hear there is no port for its media", 10)
        viewer.publisher.addTransceiver(PatternVideoTrack(160, 120), direction="sendonly")
        await viewer.publisher.setLocalDescription(await viewer.publisher.createOffer())
        await viewer.send("offer", {"target": "publisher", "sdp": viewer.publisher.localDescription.sdp})
        await until(lambda: len(refusals()) == 2, "the viewer's publisher offer to be refused", 10)
        assert all("no free port" in error["message"] for error in refusals())
        assert server.process.poll() is None
    finally:
        server.stop()
