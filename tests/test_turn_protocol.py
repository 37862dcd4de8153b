"""The TURN server's protocol, message by message (RFC 8656, RFC 8489): what a client is answered,
what is relayed and what is refused. The server runs in the test's event loop; every packet stays
on 127.0.0.1."""

from __future__ import annotations

import asyncio
import struct
import time
from pathlib import Path

from aioice import stun

from tests.support import until
from tests.turn_support import LOOPBACK, SECRET, Probe, echo_peer, running_turn
from tests.turn_support import REQUESTED_UDP as UDP
from turn.credentials import issue, password_for
from turn.messages import TurnMessage, xor_peer_address

TCP_TRANSPORT = 6 << 24


def channel_data(channel: int, payload: bytes) -> bytes:
    return struct.pack("!HH", channel, len(payload)) + payload


def bind(channel: int, peer: tuple[str, int]) -> dict[str, object]:
    return {"CHANNEL-NUMBER": channel, "XOR-PEER-ADDRESS": peer}


def parse_data_indication(frame: bytes) -> tuple[tuple[str, int], bytes]:
    message = stun.parse_message(frame)
    assert (message.message_method, message.message_class) == (stun.Method.DATA, stun.Class.INDICATION)
    return message.attributes["XOR-PEER-ADDRESS"], message.attributes["DATA"]


async def test_binding_answers_the_mapped_address() -> None:
    async with running_turn() as server, Probe((LOOPBACK, server.endpoints.port)) as probe:
        answer = await probe.request(stun.Method.BINDING, sign=False)
        assert answer.message_class == stun.Class.RESPONSE
        assert answer.attributes["XOR-MAPPED-ADDRESS"] == probe.local


async def test_allocate_needs_credentials_of_the_rest_scheme() -> None:
    async with running_turn() as server:
        address = (LOOPBACK, server.endpoints.port)
        async with Probe(address) as probe:
            challenge = await probe.exchange(TurnMessage(stun.Method.ALLOCATE, stun.Class.REQUEST))
            assert challenge.error_code == 401
            assert challenge.attributes["REALM"] == "huiyi" and challenge.attributes["NONCE"]

            answer = await probe.allocate()
            assert answer.message_class == stun.Class.RESPONSE, answer
            assert answer.check_message_integrity(probe.key()), "success answers are signed"
            relayed = answer.attributes["XOR-RELAYED-ADDRESS"]
            assert relayed[0] == LOOPBACK and relayed[1] > 0
            assert answer.attributes["LIFETIME"] == 600
            assert answer.attributes["XOR-MAPPED-ADDRESS"] == probe.local

        async with Probe(address) as wrong:
            wrong.password = password_for("another secret", wrong.username)
            assert (await wrong.allocate()).error_code == 401

        async with Probe(address) as expired:
            expired.username, expired.password = issue(SECRET, 7, 60, now=time.time() - 3600)
            assert (await expired.allocate()).error_code == 401

        async with Probe(address) as malformed:
            malformed.username = "no-expiry"
            malformed.password = password_for(SECRET, "no-expiry")
            assert (await malformed.allocate()).error_code == 401
        assert server.counters.unauthenticated >= 7
        assert server.counters.allocations == 1


async def test_a_stale_nonce_is_answered_438_with_a_new_one() -> None:
    async with running_turn(nonce_seconds=1) as server, Probe((LOOPBACK, server.endpoints.port)) as probe:
        assert (await probe.allocate()).message_class == stun.Class.RESPONSE
        first_nonce = probe.nonce

        async def stale() -> stun.Message | None:
            message = TurnMessage(stun.Method.REFRESH, stun.Class.REQUEST, attributes={"LIFETIME": 600})
            message.attributes.update({"USERNAME": probe.username, "REALM": probe.realm, "NONCE": first_nonce})
            message.add_message_integrity(probe.key())
            answer = await probe.exchange(message)
            return answer if answer.error_code == 438 else None

        answer = await until(stale, "the first nonce to go stale", timeout=5)
        assert answer.attributes["NONCE"] != first_nonce and answer.attributes["REALM"] == "huiyi"
        # Signed again with the new nonce, the same request goes through.
        refreshed = await probe.request(stun.Method.REFRESH, {"LIFETIME": 600})
        assert refreshed.message_class == stun.Class.RESPONSE


async def test_allocation_errors() -> None:
    async with running_turn() as server:
        address = (LOOPBACK, server.endpoints.port)
        async with Probe(address) as probe:
            # No allocation yet: 437 for everything but Allocate.
            assert (await probe.request(stun.Method.REFRESH)).error_code == 437
            missing = await probe.request(stun.Method.ALLOCATE, {})
            assert missing.error_code == 400, "REQUESTED-TRANSPORT is required"
            tcp = await probe.request(stun.Method.ALLOCATE, {"REQUESTED-TRANSPORT": TCP_TRANSPORT})
            assert tcp.error_code == 442
            assert tcp.check_message_integrity(probe.key()), "errors to signed requests are signed"
            assert (await probe.allocate(**{"REQUESTED-ADDRESS-FAMILY": 0x02})).error_code == 440

            first = TurnMessage(stun.Method.ALLOCATE, stun.Class.REQUEST, attributes={"REQUESTED-TRANSPORT": UDP})
            first.attributes.update({"USERNAME": probe.username, "REALM": probe.realm, "NONCE": probe.nonce})
            first.add_message_integrity(probe.key())
            granted = await probe.exchange(first)
            assert granted.message_class == stun.Class.RESPONSE
            # The same request again (a retransmission) gets the same answer; a new Allocate 437.
            again = await probe.exchange(first)
            assert again.attributes["XOR-RELAYED-ADDRESS"] == granted.attributes["XOR-RELAYED-ADDRESS"]
            assert (await probe.allocate()).error_code == 437

            # Another user's credentials on this 5-tuple: 441.
            other = Probe(address, user_id=99)
            other.transport, other.inbox = probe.transport, probe.inbox
            other.realm, other.nonce = probe.realm, probe.nonce
            assert (await other.request(stun.Method.REFRESH)).error_code == 441

            # An unknown comprehension-required attribute: 420 naming it.
            raw = bytearray(bytes(TurnMessage(stun.Method.REFRESH, stun.Class.REQUEST)))
            raw[2:4] = struct.pack("!H", 8)
            raw += struct.pack("!HH", 0x0031, 4) + b"abcd"
            refused = await probe.exchange(bytes(raw))
            assert refused.error_code == 420 and refused.attributes["UNKNOWN-ATTRIBUTES"] == struct.pack("!H", 0x0031)

            # Lifetimes: capped at an hour, never below the default; 0 deletes.
            assert (await probe.request(stun.Method.REFRESH, {"LIFETIME": 99999})).attributes["LIFETIME"] == 3600
            assert (await probe.request(stun.Method.REFRESH, {"LIFETIME": 5})).attributes["LIFETIME"] == 600
            assert (await probe.request(stun.Method.REFRESH, {"LIFETIME": 0})).attributes["LIFETIME"] == 0
            assert server.counters.allocations == 0
            gone = await probe.request(stun.Method.CREATE_PERMISSION, {"XOR-PEER-ADDRESS": (LOOPBACK, 9)})
            assert gone.error_code == 437


async def test_relay_to_addresses_that_are_not_public_is_refused() -> None:
    async with running_turn() as server, Probe((LOOPBACK, server.endpoints.port)) as probe:
        assert (await probe.allocate()).message_class == stun.Class.RESPONSE
        # Never sent anything: the server refuses before any packet leaves.
        for peer in [("127.0.0.2", 5000), ("10.1.2.3", 5000), ("192.168.1.1", 5000), ("169.254.169.254", 80),
                     ("224.0.0.251", 5353), ("0.0.0.0", 5000), ("100.64.0.1", 5000)]:  # fmt: skip
            answer = await probe.request(stun.Method.CREATE_PERMISSION, {"XOR-PEER-ADDRESS": peer})
            assert answer.error_code == 403, peer
            bind = await probe.request(stun.Method.CHANNEL_BIND, {"CHANNEL-NUMBER": 0x4000, "XOR-PEER-ADDRESS": peer})
            assert bind.error_code == 403, peer
        # The server's own listening port is no peer either, even on an allowed address.
        own = (LOOPBACK, server.endpoints.port)
        assert (await probe.request(stun.Method.CREATE_PERMISSION, {"XOR-PEER-ADDRESS": own})).error_code == 403
        # An allowed address (127.0.0.1/32 in these tests) is accepted.
        allowed = await probe.request(stun.Method.CREATE_PERMISSION, {"XOR-PEER-ADDRESS": (LOOPBACK, 5000)})
        assert allowed.message_class == stun.Class.RESPONSE
        assert server.counters.permissions_refused == 15


async def test_loopback_is_refused_without_the_allow_list() -> None:
    async with running_turn(allowed_peer_cidrs=[]) as server, Probe((LOOPBACK, server.endpoints.port)) as probe:
        assert (await probe.allocate()).message_class == stun.Class.RESPONSE
        answer = await probe.request(stun.Method.CREATE_PERMISSION, {"XOR-PEER-ADDRESS": (LOOPBACK, 5000)})
        assert answer.error_code == 403


async def test_send_and_data_indications_and_channels_relay_both_ways() -> None:
    async with running_turn() as server, echo_peer() as (peer, echo):
        for transport in ("udp", "tcp"):
            async with Probe((LOOPBACK, server.endpoints.port), transport=transport) as probe:
                assert (await probe.allocate()).message_class == stun.Class.RESPONSE
                send = TurnMessage(stun.Method.SEND, stun.Class.INDICATION)
                send.attributes.update({"XOR-PEER-ADDRESS": peer, "DATA": b"before any permission"})
                dropped, echoed = server.counters.no_permission + 1, echo.received
                probe.send(bytes(send))
                await until(lambda n=dropped: server.counters.no_permission == n, "the unpermitted packet dropped")
                assert echo.received == echoed

                permitted = await probe.request(stun.Method.CREATE_PERMISSION, {"XOR-PEER-ADDRESS": peer})
                assert permitted.message_class == stun.Class.RESPONSE
                send.attributes["DATA"] = b"hello peer"
                probe.send(bytes(send))
                assert parse_data_indication(await probe.next_frame()) == (peer, b"hello peer")

                bound = await probe.request(
                    stun.Method.CHANNEL_BIND, {"CHANNEL-NUMBER": 0x4001, "XOR-PEER-ADDRESS": peer}
                )
                assert bound.message_class == stun.Class.RESPONSE
                probe.send(channel_data(0x4001, b"odd length"))
                frame = await probe.next_frame()
                assert frame[:4] == struct.pack("!HH", 0x4001, 10) and frame[4:14] == b"odd length"
                if transport == "tcp":
                    assert len(frame) == 16, "ChannelData over TCP is padded to four bytes"

                # The same number for another peer, or another number for this peer: 400.
                other = (LOOPBACK, peer[1] + 1)
                conflict = await probe.request(
                    stun.Method.CHANNEL_BIND, {"CHANNEL-NUMBER": 0x4001, "XOR-PEER-ADDRESS": other}
                )
                assert conflict.error_code == 400
                conflict = await probe.request(
                    stun.Method.CHANNEL_BIND, {"CHANNEL-NUMBER": 0x4002, "XOR-PEER-ADDRESS": peer}
                )
                assert conflict.error_code == 400
                invalid = await probe.request(
                    stun.Method.CHANNEL_BIND, {"CHANNEL-NUMBER": 0x3FFF, "XOR-PEER-ADDRESS": peer}
                )
                assert invalid.error_code == 400
                # A channel nobody bound: dropped.
                dropped = server.counters.no_permission + 1
                probe.send(channel_data(0x4100, b"nobody"))
                await until(lambda n=dropped: server.counters.no_permission == n, "the unbound channel's drop")
        assert server.counters.packets_to_peers == 4 and server.counters.packets_to_clients == 4
        # Closing the TCP connection ended its allocation.
        await until(lambda: server.counters.allocations == 1, "the TCP allocation to go with its connection")


def sockets_between(port: int, remote_port: int) -> int:
    """UDP sockets of this machine on local ``port`` connected to ``remote_port`` (/proc/net/udp)."""
    rows = [row.split() for row in Path("/proc/net/udp").read_text().splitlines()[1:]]
    return sum(
        int(row[1].rsplit(":", 1)[1], 16) == port and int(row[2].rsplit(":", 1)[1], 16) == remote_port for row in rows
    )


async def test_a_udp_client_holding_an_allocation_is_served_on_a_socket_of_its_own() -> None:
    """So that its packets queue apart from everyone else's: a burst of many clients cannot overflow
    one receive buffer they share, nor one client fill it for the others."""
    async with running_turn() as server, echo_peer() as (peer, _):
        port = server.endpoints.port
        async with Probe((LOOPBACK, port)) as first, Probe((LOOPBACK, port)) as second:
            assert sockets_between(port, first.local[1]) == 0
            for probe in (first, second):
                assert (await probe.allocate()).message_class == stun.Class.RESPONSE
                assert sockets_between(port, probe.local[1]) == 1
                bound = await probe.request(stun.Method.CHANNEL_BIND, bind(0x4000, peer))
                assert bound.message_class == stun.Class.RESPONSE
                probe.send(channel_data(0x4000, b"through my own socket"))
                assert (await probe.next_frame())[4:] == b"through my own socket"
            released = await first.request(stun.Method.REFRESH, {"LIFETIME": 0})
            assert released.message_class == stun.Class.RESPONSE
            await until(lambda: sockets_between(port, first.local[1]) == 0, "the released client's socket closed")
            # Back on the shared listener, the first client is a stranger again; the second relays on.
            dropped = server.counters.no_permission + 1
            first.send(channel_data(0x4000, b"no allocation any more"))
            await until(lambda: server.counters.no_permission == dropped, "the stale ChannelData dropped")
            second.send(channel_data(0x4000, b"still here"))
            assert (await second.next_frame())[4:] == b"still here"
        assert server.counters.malformed == 0 and server.counters.internal_errors == 0


async def test_a_peer_without_permission_cannot_reach_the_client() -> None:
    async with running_turn() as server, Probe((LOOPBACK, server.endpoints.port)) as probe:
        relayed = (await probe.allocate()).attributes["XOR-RELAYED-ADDRESS"]
        loop = asyncio.get_running_loop()
        stranger, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=(LOOPBACK, 0))
        try:
            stranger.sendto(b"let me in", relayed)
            await until(lambda: server.counters.no_permission == 1, "the stranger's packet dropped")
            assert probe.inbox.other.empty()
        finally:
            stranger.close()


async def test_quotas_per_user_and_in_all() -> None:
    async with running_turn(max_allocations_per_user=2, max_allocations=3) as server:
        address = (LOOPBACK, server.endpoints.port)
        async with Probe(address, 1) as a, Probe(address, 1) as b, Probe(address, 1) as c, Probe(address, 2) as d:
            assert (await a.allocate()).message_class == stun.Class.RESPONSE
            assert (await b.allocate()).message_class == stun.Class.RESPONSE
            assert (await c.allocate()).error_code == 486
            assert (await d.allocate()).message_class == stun.Class.RESPONSE
            async with Probe(address, 3) as e:
                assert (await e.allocate()).error_code == 508
            # A released allocation gives its place back.
            assert (await a.request(stun.Method.REFRESH, {"LIFETIME": 0})).attributes["LIFETIME"] == 0
            assert (await c.allocate()).message_class == stun.Class.RESPONSE
        assert server.counters.allocations_refused == 2


async def test_bandwidth_per_allocation_drops_the_excess_and_counts_it() -> None:
    async with (
        running_turn(max_bytes_per_second=2000) as server,
        echo_peer() as (peer, _),
        Probe((LOOPBACK, server.endpoints.port)) as probe,
    ):
        assert (await probe.allocate()).message_class == stun.Class.RESPONSE
        bound = await probe.request(stun.Method.CHANNEL_BIND, bind(0x4000, peer))
        assert bound.message_class == stun.Class.RESPONSE
        for _ in range(40):
            probe.send(channel_data(0x4000, bytes(500)))
        await until(lambda: server.counters.over_bandwidth + server.counters.packets_to_peers == 40, "40 packets")
        # A second's worth of bytes goes through (plus what refills meanwhile); the rest is dropped.
        assert 4 <= server.counters.packets_to_peers <= 8
        assert server.counters.over_bandwidth >= 32


async def test_even_port_reservations() -> None:
    async with running_turn() as server:
        address = (LOOPBACK, server.endpoints.port)
        async with Probe(address) as first, Probe(address) as second:
            answer = await first.allocate(**{"EVEN-PORT": True})
            port = answer.attributes["XOR-RELAYED-ADDRESS"][1]
            assert port % 2 == 0
            raw_token = answer.attributes["RESERVATION-TOKEN"]
            reserved = await second.allocate(**{"RESERVATION-TOKEN": raw_token})
            assert reserved.attributes["XOR-RELAYED-ADDRESS"][1] == port + 1
            assert (await second.request(stun.Method.REFRESH, {"LIFETIME": 0})).message_class == stun.Class.RESPONSE
            async with Probe(address) as third:
                assert (await third.allocate(**{"RESERVATION-TOKEN": raw_token})).error_code == 508


async def test_tcp_connections_beyond_the_cap_are_turned_away() -> None:
    async with running_turn(max_allocations=1) as server:  # room for two connections
        address = (LOOPBACK, server.endpoints.port)
        held = [await asyncio.open_connection(*address) for _ in range(2)]
        await until(lambda: server.counters.tcp_connections == 2, "two connections open")
        reader, writer = await asyncio.open_connection(*address)
        assert await asyncio.wait_for(reader.read(), 5) == b"", "the third is closed at once"
        assert server.counters.connections_refused == 1
        writer.close()
        for _, held_writer in held:
            held_writer.close()
        await until(lambda: server.counters.tcp_connections == 0, "the held connections closed")


def create_permissions(probe: Probe, peers: list[tuple[str, int]]) -> bytes:
    """A signed CreatePermission naming every one of ``peers`` (aioice's message holds only one)."""
    message = TurnMessage(stun.Method.CREATE_PERMISSION, stun.Class.REQUEST)
    message.attributes.update({"USERNAME": probe.username, "REALM": probe.realm, "NONCE": probe.nonce})
    raw = bytes(message)
    body = b"".join(xor_peer_address(peer, message.transaction_id) for peer in peers) + raw[20:]
    unsigned = raw[:2] + struct.pack("!H", len(body)) + raw[4:20] + body
    integrity = stun.message_integrity(unsigned, probe.key())
    return raw[:2] + struct.pack("!H", len(body) + 24) + raw[4:20] + body + struct.pack("!HH", 0x0008, 20) + integrity


async def test_one_request_may_permit_many_peers_up_to_a_limit() -> None:
    async with (
        running_turn(allowed_peer_cidrs=["127.0.0.0/8"]) as server,
        Probe((LOOPBACK, server.endpoints.port)) as probe,
    ):
        assert (await probe.allocate()).message_class == stun.Class.RESPONSE
        hosts = [f"127.0.{n // 250}.{n % 250 + 1}" for n in range(1001)]
        first = await probe.exchange(create_permissions(probe, [(host, 5000) for host in hosts[:600]]))
        assert first.message_class == stun.Class.RESPONSE
        [allocation] = server.allocations.by_link.values()
        assert len(allocation.permissions) == 600
        over = await probe.exchange(create_permissions(probe, [(host, 5000) for host in hosts[600:]]))
        assert over.error_code == 508 and len(allocation.permissions) == 600, "all or nothing"
        fits = await probe.exchange(create_permissions(probe, [(host, 5000) for host in hosts[600:1000]]))
        assert fits.message_class == stun.Class.RESPONSE and len(allocation.permissions) == 1000
        # Refreshing a permission it holds still works at the limit.
        again = await probe.request(stun.Method.CREATE_PERMISSION, {"XOR-PEER-ADDRESS": (hosts[0], 1)})
        assert again.message_class == stun.Class.RESPONSE
