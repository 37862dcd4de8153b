"""The TURN server against other people's TURN code, and our clients against other people's TURN
server: coturn's load client (``turnutils_uclient``) and aioice's TURN client relay through our
server, running in its own process as the main server runs it; aiortc peers reach the SFU relayed
through coturn's ``turnserver`` (with credentials of our scheme) and through our own server. All
traffic stays on 127.0.0.1."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import re
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from aioice import stun
from aioice.turn import create_turn_endpoint
from aiortc import RTCPeerConnection
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.rtc_clients import Participant, invite_code_of, join_meeting, make_meeting, make_user
from tests.server_process import ServerProcess, free_port, start_server
from tests.support import until
from tests.turn_support import LOOPBACK, SECRET, coturn_program, echo_peer, turn_settings
from turn.credentials import issue
from turn.process import TurnProcess


@pytest.fixture
async def turn_process(tmp_path: Path) -> AsyncIterator[TurnProcess]:
    """Our TURN server in its own process, with TLS, as run_server.py starts it."""
    cert, key = self_signed_certificate(tmp_path)
    settings = turn_settings(
        max_allocations_per_user=100, max_bytes_per_second=0, tls_cert=str(cert), tls_key=str(key), tls_port=0
    )
    process = TurnProcess(settings, SECRET, "WARNING")
    await process.start()
    yield process
    await process.close()


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, its own issuer, so a client can verify it with it as the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "huiyi test TURN")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "turn.crt", directory / "turn.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@contextmanager
def coturn_peer() -> Iterator[int]:
    """coturn's UDP echo peer on 127.0.0.1."""
    program = coturn_program("turnutils_peer")
    port = free_udp_port()
    process = subprocess.Popen(
        [program, "-L", LOOPBACK, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield port
    finally:
        process.terminate()
        process.wait(10)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


# coturn's client and echo peer against our server ---------------------------------------------

UCLIENT_MODES = {
    # Two clients, each with an RTP allocation (EVEN-PORT, reserving the next port) and an RTCP one
    # (RESERVATION-TOKEN), both relaying over channels.
    "udp-channels": ["-m", "2"],
    # Over TCP, with Send and Data indications instead of channels.
    "tcp-indications": ["-t", "-s", "-m", "2"],
    # Clients relaying to each other's relayed addresses, asking for DONT-FRAGMENT.
    "client-to-client": ["-y", "-g", "-m", "2"],
    # Over TLS.
    "tls": ["-t", "-S", "-m", "1"],
}


@pytest.mark.parametrize("mode", sorted(UCLIENT_MODES))
async def test_coturn_client_relays_through_our_server(turn_process: TurnProcess, mode: str) -> None:
    program = coturn_program("turnutils_uclient")
    endpoints = turn_process.endpoints
    assert endpoints is not None
    port = endpoints.tls_port if mode == "tls" else endpoints.port
    with coturn_peer() as peer_port:
        arguments = [program, *UCLIENT_MODES[mode], "-n", "30", "-z", "5", "-W", SECRET, "-u", "uclient"]
        arguments += ["-e", LOOPBACK, "-r", str(peer_port), "-p", str(port), LOOPBACK]
        result = await asyncio.to_thread(subprocess.run, arguments, capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Total lost packets 0 (0.000000%)" in output, output
    # Over TLS the client also tries protocol versions older than 1.2, which the server refuses; it
    # then connects with a current one. Any other error counts.
    complaints = [
        line
        for line in output.splitlines()
        if re.search(r"error|fail", line, re.IGNORECASE) and not re.search(r"tls_connect|SSL routines", line)
    ]
    assert not complaints, output
    sent = int(re.findall(r"tot_send_msgs=(\d+)", output)[-1])
    assert sent >= 30 and f"tot_recv_msgs={sent}" in output, output
    counters = await turn_process.counters()
    assert counters["packets_to_clients"] >= sent and counters["malformed"] == 0, counters
    assert counters["allocations_created"] >= 2 and counters["allocations_refused"] == 0, counters


async def turn_process_allocations(process: TurnProcess) -> bool:
    return (await process.counters())["allocations"] == 0


# aioice's TURN client against our server ----------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
async def test_aioice_client_relays_through_our_server(
    turn_process: TurnProcess, transport: str, tmp_path: Path
) -> None:
    endpoints = turn_process.endpoints
    assert endpoints is not None
    username, password = issue(SECRET, 42, 600)
    context = None
    port = endpoints.port
    if transport == "tls":
        context = ssl.create_default_context(cafile=turn_process.settings.tls_cert)
        port = endpoints.tls_port

    received: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    class Receiver(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            received.put_nowait((data, addr))

    async with echo_peer() as (peer, echo):
        relay, _ = await create_turn_endpoint(
            Receiver,
            (LOOPBACK, port),
            username,
            password,
            ssl=context,
            transport="tcp" if transport == "tls" else transport,
        )
        try:
            assert relay.get_extra_info("sockname")[0] == LOOPBACK
            for n in range(20):
                relay.sendto(b"packet %d" % n, peer)
            answers = [await asyncio.wait_for(received.get(), 5) for _ in range(20)]
            assert sorted(data for data, _ in answers) == sorted(b"packet %d" % n for n in range(20))
            assert {addr for _, addr in answers} == {peer}
            assert echo.received == 20
        finally:
            relay.close()
    await until(lambda: turn_process_allocations(turn_process), "the allocation deleted on close", timeout=10)


async def test_wrong_credentials_are_refused_by_aioice_s_client_too(turn_process: TurnProcess) -> None:
    endpoints = turn_process.endpoints
    assert endpoints is not None
    username, _ = issue(SECRET, 42, 600)
    with pytest.raises(stun.TransactionFailed, match="401"):
        await create_turn_endpoint(asyncio.DatagramProtocol, (LOOPBACK, endpoints.port), username, "not it")


# aiortc peers reaching the SFU through a TURN server --------------------------------------------


@contextmanager
def coturn_server(directory: Path, secret: str) -> Iterator[int]:
    """coturn's turnserver on 127.0.0.1, checking credentials of our scheme with ``secret``."""
    program = coturn_program("turnserver")
    port = free_port()
    log = directory / "coturn.log"
    process = subprocess.Popen(
        [
            program,
            "-n",
            "--listening-ip=127.0.0.1",
            f"--listening-port={port}",
            "--relay-ip=127.0.0.1",
            "--use-auth-secret",
            f"--static-auth-secret={secret}",
            "--realm=huiyi",
            "--allow-loopback-peers",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            f"--log-file={log}",
            "--simple-log",
            f"--pidfile={directory / 'coturn.pid'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((LOOPBACK, port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"turnserver did not start: {log.read_text() if log.exists() else ''}") from None
                time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        process.wait(10)


def selected_local_candidate_type(pc: RTCPeerConnection) -> str | None:
    ice = pc.getTransceivers()[0].sender.transport.transport
    pair = ice._connection._nominated.get(1)
    return pair.local_candidate.type if pair is not None else None


@pytest.fixture
def sfu_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    env = {"HUIYI_RATE_LIMITS": "off", "HUIYI_SFU_BIND_ADDRESSES": LOOPBACK, **getattr(request, "param", {})}
    process = start_server("--data-dir", str(tmp_path / "data"), log=tmp_path / "server.log", env=env)
    yield process
    process.stop()


async def relayed_meeting(server: ServerProcess, ice_servers: object = None) -> list[Participant]:
    """A host publishing and a guest watching, both relay-only, with ``ice_servers`` or those the
    server hands out; the guest has decoded the host's video when this returns."""
    people = []
    host_token, host_id = make_user(server.url, "host")
    meeting_id = make_meeting(server.url, host_token)
    join_meeting(server.url, host_token, meeting_id)
    guest_token, guest_id = make_user(server.url, "guest")
    join_meeting(server.url, guest_token, meeting_id, invite_code_of(server.url, host_token, meeting_id))
    for token, user_id in ((host_token, host_id), (guest_token, guest_id)):
        servers = ice_servers(user_id) if callable(ice_servers) else None
        person = Participant(server.url, token, user_id, meeting_id, ice_servers=servers, relay_only=True)
        people.append(person)
        await person.connect()
    host, guest = people
    await host.publish(video=(160, 120), audio=False)
    await until(
        lambda: (t := guest.video_from(host_id)) is not None and t.frames >= 10, "the guest to decode the host", 30
    )
    assert guest.subscriber is not None
    for pc in (host.publisher, guest.subscriber):
        assert selected_local_candidate_type(pc) == "relay"
    return people


async def test_aiortc_peers_reach_the_sfu_relayed_through_coturn(sfu_server: ServerProcess, tmp_path: Path) -> None:
    secret = "shared with coturn's static-auth-secret"
    with coturn_server(tmp_path, secret) as port:

        def through_coturn(user_id: int) -> list[dict[str, object]]:
            username, password = issue(secret, user_id, 600)
            return [{"urls": [f"turn:{LOOPBACK}:{port}?transport=udp"], "username": username, "credential": password}]

        people = await relayed_meeting(sfu_server, through_coturn)
        await asyncio.gather(*(person.close() for person in people))


OUR_TURN = {
    "HUIYI_TURN_ENABLED": "true",
    "HUIYI_TURN_LISTEN_HOST": LOOPBACK,
    "HUIYI_TURN_PORT": "0",
    "HUIYI_TURN_RELAY_PORT_MIN": "0",
    "HUIYI_TURN_RELAY_PORT_MAX": "0",
    "HUIYI_TURN_ALLOWED_PEER_CIDRS": "127.0.0.1/32",
}


@pytest.mark.parametrize("sfu_server", [OUR_TURN], indirect=True)
async def test_aiortc_peers_reach_the_sfu_relayed_through_our_server(sfu_server: ServerProcess) -> None:
    people = await relayed_meeting(sfu_server)
    try:
        urls = people[0].ice_servers[0]["urls"]  # type: ignore[index]
        assert urls[0].startswith(f"stun:{LOOPBACK}:") and f"turn:{LOOPBACK}:" in urls[1]
    finally:
        await asyncio.gather(*(person.close() for person in people))
    # SIGUSR1 makes the server log the TURN counters.
    sfu_server.process.send_signal(signal.SIGUSR1)
    line = await until(
        lambda: re.search(r"turn status: .* to_peers=(\d+)pkt/\d+B to_clients=(\d+)pkt", sfu_server.log.read_text()),
        "the TURN status line in the server log",
    )
    # Both ways: the host's media to the SFU, and the SFU's to the guest (ten frames or more).
    assert int(line.group(1)) > 10 and int(line.group(2)) > 10, line.group(0)
