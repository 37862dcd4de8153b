"""A bounded fuzz of the TURN server's UDP and TCP ports: a few thousand packets in a few seconds
to the server in its own process. Half are mutations of valid messages (signed requests of an
allocation the fuzzer holds, indications, ChannelData) and plain noise; half are requests signed
as they should be whose values are drawn at random (lifetimes, channel numbers, transports,
families, reservation tokens, unknown attributes), so they get past authentication to the
handlers. Peer addresses are only ever loopback ones. Afterwards the server must still be up,
answering, and relaying for a new client, with what it dropped counted as malformed."""

from __future__ import annotations

import asyncio
import os
import random
import struct

from aioice import stun

from tests.turn_support import LOOPBACK, SECRET, Probe, echo_peer, turn_settings
from turn.messages import TurnMessage
from turn.process import TurnProcess

SEED = int(os.environ.get("HUIYI_FUZZ_SEED", "20261126"))
UDP_PACKETS = 3000
TCP_CONNECTIONS = 20
RETRANSMISSIONS = 4
TCP_FRAMES = 60  # per connection, until a mutation breaks the framing and the server hangs up


def signed(probe: Probe, method: stun.Method, attributes: dict[str, object]) -> bytes:
    message = TurnMessage(method, stun.Class.REQUEST, attributes=dict(attributes))
    message.attributes.update({"USERNAME": probe.username, "REALM": probe.realm, "NONCE": probe.nonce})
    message.add_message_integrity(probe.key())
    return bytes(message)


def random_request(rng: random.Random, probe: Probe) -> bytes:
    """A signed request with random values; its peer addresses are loopback ones."""
    method = rng.choice(
        [stun.Method.ALLOCATE, stun.Method.REFRESH, stun.Method.CREATE_PERMISSION, stun.Method.CHANNEL_BIND]
    )
    pool: dict[str, object] = {
        "REQUESTED-TRANSPORT": rng.choice([17 << 24, 6 << 24, rng.randrange(1 << 32)]),
        "LIFETIME": rng.choice([0, 1, 600, 3600, 1 << 31, rng.randrange(1 << 32)]),
        "CHANNEL-NUMBER": rng.choice([0x4000, 0x4FFF, 0x7FFE, 0x7FFF, 0x3FFF, rng.randrange(0x10000)]),
        "XOR-PEER-ADDRESS": rng.choice([(LOOPBACK, rng.randrange(1, 0x10000)), ("127.0.0.9", 5000), ("::1", 5000)]),
        "REQUESTED-ADDRESS-FAMILY": rng.choice([1, 2, rng.randrange(256)]),
        "EVEN-PORT": rng.random() < 0.5,
        "RESERVATION-TOKEN": rng.randbytes(8),
        "DONT-FRAGMENT": True,
        "DATA": rng.randbytes(rng.randrange(20)),
    }
    chosen = {name: value for name, value in pool.items() if rng.random() < 0.3}
    return signed(probe, method, chosen)


def seeds(probe: Probe, peer: tuple[str, int]) -> list[bytes]:
    """Valid messages of every kind the server reads, signed for the probe's allocation."""
    found = []
    for method, attributes in [
        (stun.Method.BINDING, {}),
        (stun.Method.ALLOCATE, {"REQUESTED-TRANSPORT": 17 << 24, "LIFETIME": 600}),
        (stun.Method.REFRESH, {"LIFETIME": 600}),
        (stun.Method.CREATE_PERMISSION, {"XOR-PEER-ADDRESS": peer}),
        (stun.Method.CHANNEL_BIND, {"CHANNEL-NUMBER": 0x4000, "XOR-PEER-ADDRESS": peer}),
    ]:
        message = TurnMessage(method, stun.Class.REQUEST, attributes=dict(attributes))
        message.attributes.update({"USERNAME": probe.username, "REALM": probe.realm, "NONCE": probe.nonce})
        message.add_message_integrity(probe.key())
        found.append(bytes(message))
    send = TurnMessage(
        stun.Method.SEND, stun.Class.INDICATION, attributes={"XOR-PEER-ADDRESS": peer, "DATA": b"x" * 40}
    )
    found.append(bytes(send))
    found.append(struct.pack("!HH", 0x4000, 12) + b"channel data")
    return found


def mutate(rng: random.Random, data: bytes) -> bytes:
    packet = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(7)
        if choice == 0 and packet:  # flip bits
            index = rng.randrange(len(packet))
            packet[index] ^= 1 << rng.randrange(8)
        elif choice == 1 and packet:  # truncate
            del packet[rng.randrange(len(packet)) :]
        elif choice == 2:  # lie about the length
            packet[2:4] = struct.pack("!H", rng.choice([0, 1, 4, 0xFFFC, rng.randrange(0x10000)]))
        elif choice == 3:  # an attribute of any type and length, well or badly framed
            kind = rng.choice([0x0012, 0x0013, 0x000C, 0x000D, 0x0006, 0x0008, 0x8028, 0x0018, 0x0022, 0x001A,
                               0x0017, rng.randrange(0x10000)])  # fmt: skip
            value = rng.randbytes(rng.randrange(0, 40))
            packet[20:20] = struct.pack("!HH", kind, rng.choice([len(value), rng.randrange(0x10000)])) + value
        elif choice == 4:  # another method or class
            packet[0:2] = struct.pack("!H", rng.randrange(0x4000))
        elif choice == 5:  # noise
            packet = bytearray(rng.randbytes(rng.randrange(1, 200)))
        elif packet:  # duplicate a slice
            start = rng.randrange(len(packet))
            packet += packet[start : start + rng.randrange(1, 30)]
    return bytes(packet)


async def round_trip(probe: Probe) -> None:
    """A Binding request answered; sent again, as STUN clients do, if a datagram went missing (on
    a busy machine a full receive buffer drops one even on loopback)."""
    binding = bytes(TurnMessage(stun.Method.BINDING, stun.Class.REQUEST))
    for _ in range(RETRANSMISSIONS):
        try:
            await probe.exchange(binding, timeout=2.0)
            return
        except TimeoutError:
            continue
    raise AssertionError(f"no answer to a Binding request sent {RETRANSMISSIONS} times")


async def test_fuzzed_packets_leave_the_server_up_and_answering() -> None:
    rng = random.Random(SEED)
    process = TurnProcess(turn_settings(), SECRET, "WARNING")
    endpoints = await process.start()
    address = (LOOPBACK, endpoints.port)
    try:
        async with echo_peer() as (peer, _), Probe(address) as probe:
            assert (await probe.allocate()).message_class == stun.Class.RESPONSE
            valid = seeds(probe, peer)
            for n in range(UDP_PACKETS):
                if n % 2:
                    probe.send(mutate(rng, rng.choice(valid)))
                else:
                    probe.send(random_request(rng, probe))
                if n % 100 == 99:
                    # A round trip: the server has read everything sent before it, so a busy
                    # machine makes the fuzz slower, never lost in a full socket buffer.
                    await round_trip(probe)
            for _ in range(TCP_CONNECTIONS):
                reader_writer = await asyncio.open_connection(*address)
                writer = reader_writer[1]
                for _ in range(TCP_FRAMES):
                    if writer.is_closing():
                        break
                    writer.write(mutate(rng, rng.choice(valid)))
                    await asyncio.sleep(0)
                writer.close()
            # Still answering, on both transports, and relaying for someone new.
            for transport in ("udp", "tcp"):
                async with Probe(address, user_id=2, transport=transport) as fresh:
                    answer = await fresh.request(stun.Method.BINDING, sign=False)
                    assert answer.attributes["XOR-MAPPED-ADDRESS"] == fresh.local
                    assert (await fresh.allocate()).message_class == stun.Class.RESPONSE
                    bind = {"CHANNEL-NUMBER": 0x4100, "XOR-PEER-ADDRESS": peer}
                    bound = await fresh.request(stun.Method.CHANNEL_BIND, bind)
                    assert bound.message_class == stun.Class.RESPONSE
                    fresh.send(struct.pack("!HH", 0x4100, 5) + b"alive")
                    frame = await fresh.next_frame()
                    assert frame[4:9] == b"alive"
        counters = await process.counters()
        assert counters["malformed"] > 100, counters
        assert counters["requests"] > UDP_PACKETS // 3, counters
        assert counters["internal_errors"] == 0, counters
    finally:
        await process.close()
