"""The sockets the media server opens at start and every connection shares: the single UDP port
(``[sfu] udp_port``) and the ICE-over-TCP port (``[sfu] tcp_port``) on each bound address."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aioice.utils import random_string

from config.settings import ConfigError
from sfu.icetcp import TcpListener
from sfu.network import Network, SharedPort
from sfu.udpmux import SharedUdpPort

# The ufrag names a connection on a shared port: long enough that picking a free one takes one try.
UFRAG_LENGTH = 8


@dataclass
class Listeners:
    ports: list[SharedPort]

    def fresh_ufrag(self) -> str:
        """An ICE ufrag no connection on these ports has."""
        while True:
            ufrag = random_string(UFRAG_LENGTH)
            if not any(ufrag in port.by_ufrag for port in self.ports):
                return ufrag

    @property
    def udp_sockets(self) -> int:
        return sum(port.kind == "udp" for port in self.ports)

    def status(self) -> str:
        """For the media status line: what the shared ports route, and what they dropped."""
        udp = [port for port in self.ports if isinstance(port, SharedUdpPort)]
        tcp = [port for port in self.ports if isinstance(port, TcpListener)]
        return (
            f"shared_udp_ports={len(udp)} udp_connections={sum(len(port.by_ufrag) for port in udp)}"
            f" udp_addresses={sum(len(port.by_address) for port in udp)}"
            f" tcp_ports={len(tcp)} tcp_streams={sum(len(p.streams) + len(p.unidentified) for p in tcp)}"
            f" shared_malformed={sum(port.malformed for port in self.ports)}"
            f" shared_unrouted={sum(port.unrouted for port in self.ports)}"
        )

    def close(self) -> None:
        for port in self.ports:
            port.close()


async def open_listeners(network: Network) -> Network:
    """``network`` with its shared ports open, or as it is when it has none. A port that cannot be
    bound stops the server with a message naming the setting."""
    if not network.udp_port and not network.tcp_port:
        return network
    ports: list[SharedPort] = []
    try:
        for address in network.addresses():
            if not network.announced(address):
                continue  # an IP version nothing is announced for
            if network.udp_port:
                ports.append(await _open("udp_port", SharedUdpPort.open, address, network.udp_port))
            if network.tcp_port:
                ports.append(await _open("tcp_port", TcpListener.open, address, network.tcp_port))
    except ConfigError:
        Listeners(ports).close()
        raise
    if not ports:
        raise ConfigError("sfu.bind_addresses: no address to open udp_port or tcp_port on")
    return dataclasses.replace(network, listeners=Listeners(ports))


async def _open(
    setting: str, opener: Callable[[str, int], Awaitable[SharedPort]], address: str, port: int
) -> SharedPort:
    try:
        return await opener(address, port)
    except OSError as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc  # uvloop wraps the bind error
        reason = os.strerror(cause.errno) if cause.errno else str(cause)
        raise ConfigError(f"sfu.{setting}: cannot listen on {address} port {port} ({reason})") from None
