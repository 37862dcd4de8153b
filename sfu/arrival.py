"""When a datagram reached this machine, as the kernel stamped it on arrival.

The transport-wide feedback the server sends a publisher (``sfu/twcc.py``) says when each of its
packets arrived, and the publisher's own estimator reads growing gaps between those times as a
queue building up on the path. Times taken when Python gets to a packet include how long the
packet waited in the socket for a busy event loop (or a busy machine) to read it: a server short
of CPU would look like a congested network, and every publisher in its rooms would lower its
quality for it. The kernel stamps each datagram as it comes in; ``ArrivalClock.stamp`` reads that
stamp for the datagram just read from its socket (``SIOCGSTAMPNS``), with whatever event loop read
it, and gives it on the ``time.monotonic`` clock the rest of the server keeps.

Where the kernel cannot say (a socket the clock could not be set up on, a stream socket), the time
is taken when the packet is handled, as before.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import socket
import struct
import time

log = logging.getLogger("huiyi.sfu.arrival")

SIOCGSTAMPNS = 0x8907  # Linux: the receive time of the last datagram read, as a timespec
_TIMESPEC = struct.Struct("@qq")


class ArrivalClock:
    """When a datagram arrived: the moment its packet is handled (the kernel's clock is in
    ``KernelArrivalClock``)."""

    def stamp(self) -> float:
        return time.monotonic()


HANDLING_TIME = ArrivalClock()


class KernelArrivalClock(ArrivalClock):
    """The kernel's receive time of the datagram last read from one UDP socket. ``stamp`` must be
    called before the socket's next datagram is read (in the protocol's ``datagram_received``)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray(_TIMESPEC.size)

    @classmethod
    def of(cls, sock: socket.socket | None) -> ArrivalClock:
        """The kernel's clock for ``sock``, or the handling time if it cannot have one. The first
        query turns the socket's receive stamps on (until then it has none to give: ENOENT)."""
        if sock is None:
            return HANDLING_TIME
        try:
            fcntl.ioctl(sock.fileno(), SIOCGSTAMPNS, bytearray(_TIMESPEC.size), True)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.info("no kernel receive times on this socket (%s); packets are timed as handled", exc)
                return HANDLING_TIME
        return cls(sock.fileno())

    def stamp(self) -> float:
        try:
            fcntl.ioctl(self._fd, SIOCGSTAMPNS, self._buffer, True)
        except OSError:  # a datagram the kernel did not stamp
            return time.monotonic()
        seconds, nanoseconds = _TIMESPEC.unpack(self._buffer)
        # The stamp is on the wall clock; the server times everything else on the monotonic one.
        now = time.monotonic()
        return min(now, seconds + nanoseconds * 1e-9 - time.time() + now)
