"""One ICE + DTLS + SRTP association with a client, on aiortc's transports, minus its media stack.

aiortc's DTLS transport decrypts packets and hands them to its RTP router, whose receivers decode.
Here the decrypted bytes go straight to the SFU's callbacks, and sending is synchronous: encrypt,
then ``sendto`` on the nominated candidate pair, with no await per packet.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pylibsrtp
from aioice import Candidate, Connection
from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsFingerprint, RTCDtlsParameters, RTCDtlsTransport

from sfu.network import MediaConnection, MediaProtocol
from sfu.sdp import LocalTransport

log = logging.getLogger("huiyi.sfu.transport")

CONNECT_TIMEOUT_SECONDS = 30.0


class TransportStats:
    """Counters an operator reads to see what a client's transport dropped and why."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "last_heard",
        "malformed",
        "packets_in",
        "packets_out",
        "send_failures",
        "srtp_failures",
    )

    def __init__(self) -> None:
        self.packets_in = self.bytes_in = self.packets_out = self.bytes_out = 0
        self.srtp_failures = self.malformed = self.send_failures = 0
        self.last_heard = time.monotonic()  # of the last RTP or RTCP packet that decrypted


class CountingSrtp:
    """Wraps the receive SRTP session so that packets failing authentication are counted."""

    def __init__(self, session: pylibsrtp.Session, stats: TransportStats) -> None:
        self._session = session
        self._stats = stats

    def unprotect(self, data: bytes) -> bytes:
        try:
            return self._session.unprotect(data)
        except pylibsrtp.Error:
            self._stats.srtp_failures += 1
            raise

    def unprotect_rtcp(self, data: bytes) -> bytes:
        try:
            return self._session.unprotect_rtcp(data)
        except pylibsrtp.Error:
            self._stats.srtp_failures += 1
            raise


class IceLink:
    """What the DTLS transport sees of ICE: one aioice connection at a time, so an ICE restart can
    swap the connection underneath while the DTLS association and its SRTP keys carry on."""

    role = "controlled"

    def __init__(self, connection: MediaConnection, stats: TransportStats) -> None:
        self.stats = stats
        self.connection = connection
        self.closed = False
        self.arrived = time.monotonic()  # when the datagram last received reached this machine

    @property
    def connection(self) -> MediaConnection:
        return self._connection

    @connection.setter
    def connection(self, connection: MediaConnection) -> None:
        """Its sockets count what they drop into the transport's ``malformed``."""
        self._connection = connection
        for protocol in connection._protocols:
            if isinstance(protocol, MediaProtocol):
                protocol.stats = self.stats

    async def _recv(self) -> bytes:
        while True:
            current = self.connection
            try:
                data, self.arrived = await current.recvfrom()
                return data
            except ConnectionError:
                if self.closed or current is self.connection:
                    raise

    async def _send(self, data: bytes) -> None:
        self.send_now(data)

    def send_now(self, data: bytes) -> bool:
        pair = self.connection._nominated.get(1)
        if pair is None or pair.protocol.transport is None:
            return False
        pair.protocol.transport.sendto(data, pair.remote_addr)
        return True


async def connect_ice(connection: Connection, ufrag: str, password: str, candidates: list[str]) -> None:
    connection.remote_username = ufrag
    connection.remote_password = password
    for line in candidates:
        await add_candidate(connection, line)
    await asyncio.wait_for(connection.connect(), CONNECT_TIMEOUT_SECONDS)


async def add_candidate(connection: Connection, line: str | None) -> None:
    """Add a client's UDP candidate. A line that does not parse is ignored, and so are TCP candidates
    (a client's active ones are where it connects from, not something to reach) and the end of the
    list (``None``): the server is ICE-lite, so whether ICE succeeds is the client's to find out by
    its checks, which may come from addresses it never signaled (a TCP stream, a NAT's mapping), until
    ``CONNECT_TIMEOUT_SECONDS``. Told that the list has ended, aioice would give up as soon as its own
    checks of the signaled candidates failed, or at once with none signaled."""
    candidate = parse_candidate(line) if line is not None else None
    if candidate is None or candidate.transport.lower() != "udp":
        return
    await connection.add_remote_candidate(candidate)


def parse_candidate(line: str) -> Candidate | None:
    """A client's ``candidate:...`` line, or ``None`` (logged) when it does not parse."""
    text = line.removeprefix("candidate:")
    try:
        return Candidate.from_sdp(text)
    except (ValueError, IndexError):
        log.debug("ignoring malformed candidate %r", text[:80])
        return None


class MediaTransport(RTCDtlsTransport):
    """DTLS-SRTP over an ``IceLink``, delivering decrypted RTP and RTCP to two callbacks."""

    def __init__(
        self,
        connection: MediaConnection,
        certificate: RTCCertificate,
        on_rtp: Callable[[bytes], None],
        on_rtcp: Callable[[bytes], None],
    ) -> None:
        self.stats = TransportStats()
        self.link = IceLink(connection, self.stats)
        super().__init__(self.link, [certificate])  # type: ignore[arg-type]
        self.on_rtp = on_rtp
        self.on_rtcp = on_rtcp
        self._certificate = certificate

    def local_description(self, setup: str) -> LocalTransport:
        connection = self.link.connection
        return LocalTransport(
            ice_ufrag=connection.local_username,
            ice_pwd=connection.local_password,
            fingerprints=[(fp.algorithm, fp.value) for fp in self._certificate.getFingerprints()],
            candidates=[candidate.to_sdp() for candidate in connection.local_candidates],
            setup=setup,
        )

    async def establish(self, ufrag: str, password: str, candidates: list[str], fingerprints, role: str) -> None:
        """ICE checks, then the DTLS handshake; raises ConnectionError if either fails."""
        try:
            await connect_ice(self.link.connection, ufrag, password, candidates)
        except (TimeoutError, ConnectionError) as exc:
            raise ConnectionError(f"ICE failed: {exc or 'timed out'}") from exc
        self._set_role(role)
        parameters = RTCDtlsParameters(fingerprints=[RTCDtlsFingerprint(a, v) for a, v in fingerprints])
        try:
            await asyncio.wait_for(self.start(parameters), CONNECT_TIMEOUT_SECONDS)
        except TimeoutError as exc:
            raise ConnectionError("DTLS handshake timed out") from exc
        if self.state != "connected":
            raise ConnectionError(f"DTLS handshake failed ({self.state})")

    def client_address(self) -> str:
        """Where the client's media comes from, for the log: the address of the pair ICE settled on
        and the kind of candidate the client named it as (``relay``: its TURN server's address)."""
        pair = self.link.connection._nominated.get(1)
        if pair is None:
            return "an unknown address"
        return f"{pair.remote_addr[0]}:{pair.remote_addr[1]} ({pair.remote_candidate.type} candidate)"

    async def complete_restart(self, fresh: MediaConnection, ufrag: str, password: str, candidates: list[str]) -> None:
        """Switch to ``fresh`` (gathered for the restart's answer) once its checks succeed."""
        await connect_ice(fresh, ufrag, password, candidates)
        previous, self.link.connection = self.link.connection, fresh
        await previous.close()

    @property
    def arrived(self) -> float:
        """When the packet being handled reached this machine (``time.monotonic`` clock)."""
        return self.link.arrived

    def _setup_srtp(self) -> None:
        super()._setup_srtp()
        if self._rx_srtp is not None:
            self._rx_srtp = CountingSrtp(self._rx_srtp, self.stats)  # type: ignore[assignment]

    async def _handle_rtp_data(self, data: bytes, arrival_time_ms: int) -> None:
        self.stats.packets_in += 1
        self.stats.last_heard = time.monotonic()
        self.stats.bytes_in += len(data)
        try:
            self.on_rtp(data)
        except ValueError:
            self.stats.malformed += 1
        except Exception:
            self.stats.malformed += 1
            log.exception("RTP handling failed; packet dropped")

    async def _handle_rtcp_data(self, data: bytes) -> None:
        self.stats.last_heard = time.monotonic()
        try:
            self.on_rtcp(data)
        except ValueError:
            self.stats.malformed += 1
        except Exception:
            self.stats.malformed += 1
            log.exception("RTCP handling failed; packet dropped")

    def send_rtp(self, data: bytes) -> None:
        if self._tx_srtp is None:
            return
        protected = self._tx_srtp.protect(data)
        self._emit(protected)

    def send_rtcp(self, data: bytes) -> None:
        if self._tx_srtp is None:
            return
        protected = self._tx_srtp.protect_rtcp(data)
        self._emit(protected)

    def _emit(self, protected: bytes) -> None:
        if self.link.send_now(protected):
            self.stats.packets_out += 1
            self.stats.bytes_out += len(protected)
        else:
            self.stats.send_failures += 1

    async def close(self) -> None:
        self.link.closed = True
        try:
            await self.stop()
        except Exception:  # a half-open handshake may fail to shut down cleanly; the socket goes anyway
            log.debug("DTLS stop failed", exc_info=True)
        await self.link.connection.close()
