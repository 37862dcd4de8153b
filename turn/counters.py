"""What the TURN server has done since it started, for its status line and for tests and benchmarks."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(slots=True)
class Counters:
    allocations: int = 0  # held now
    allocations_created: int = 0
    allocations_refused: int = 0  # quota, capacity, forbidden transport or family
    permissions_refused: int = 0  # CreatePermission or ChannelBind towards a forbidden peer (403)
    packets_to_peers: int = 0
    bytes_to_peers: int = 0
    packets_to_clients: int = 0
    bytes_to_clients: int = 0
    requests: int = 0
    unauthenticated: int = 0  # requests answered 401 or 438, and indications from strangers
    malformed: int = 0  # datagrams or stream frames that are not STUN or ChannelData
    no_permission: int = 0  # relayed packets dropped: no permission, channel or allocation
    over_bandwidth: int = 0  # relayed packets dropped by the per-allocation byte rate
    client_backlog: int = 0  # packets dropped because a TCP client does not read fast enough
    tcp_connections: int = 0  # open now
    connections_refused: int = 0  # TCP and TLS connections turned away at the cap
    internal_errors: int = 0  # packets whose handling failed unexpectedly (logged with a traceback)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def status_line(self, channels: int, permissions: int) -> str:
        return (
            f"turn status: allocations={self.allocations} created={self.allocations_created} "
            f"refused={self.allocations_refused} channels={channels} permissions={permissions} "
            f"tcp_connections={self.tcp_connections} connections_refused={self.connections_refused} "
            f"requests={self.requests} "
            f"to_peers={self.packets_to_peers}pkt/{self.bytes_to_peers}B "
            f"to_clients={self.packets_to_clients}pkt/{self.bytes_to_clients}B "
            f"dropped: malformed={self.malformed} unauthenticated={self.unauthenticated} "
            f"no_permission={self.no_permission} forbidden_peer={self.permissions_refused} "
            f"over_bandwidth={self.over_bandwidth} client_backlog={self.client_backlog} "
            f"internal_errors={self.internal_errors}"
        )
