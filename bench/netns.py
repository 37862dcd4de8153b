"""A network namespace of the harness's own, so Janus's media stays on loopback addresses.

Janus never offers an address of a loopback interface: it skips every interface flagged
IFF_LOOPBACK when it gathers, so on its own it would offer the machine's real addresses, and a
namespace with only ``lo`` leaves it without a candidate at all. Its ICE library (libnice) also pins
every socket to the interface its address belongs to (IP_UNICAST_IF), so an address added to some
other interface sends everything out of that interface, to 127.0.0.1 too.

So a run that includes Janus re-executes the harness in a new network namespace holding ``lo`` and a
veth pair: JANUS_ADDRESS (127.0.0.2) on JANUS_LINK is the address Janus offers; what it sends there
crosses the pair to CLIENT_LINK, which is told to accept loopback destinations (route_localnet) and
its own namespace's addresses as sources (accept_local), and so reaches the clients on 127.0.0.1;
the clients' packets to 127.0.0.2 go through ``lo``. Everything else of the run (huiyi, the clients,
the baselines) runs in the namespace on 127.0.0.1 as usual. The kernel removes the namespace and its
links when the run's last process exits, however it ends; the machine's own interfaces are never
touched. Root can make the namespace; anyone else needs unprivileged user namespaces."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

JANUS_LINK = "janus0"  # the end of the pair Janus's address is on
CLIENT_LINK = "janus1"  # the end Janus's packets arrive on
JANUS_ADDRESS = "127.0.0.2"
INSIDE = "HUIYI_BENCH_NETNS"  # set for the re-executed harness, which sets its fresh namespace up
SYSCTLS = {JANUS_LINK: {"route_localnet": "1"}, CLIENT_LINK: {"route_localnet": "1", "accept_local": "1"}}


class NamespaceError(RuntimeError):
    """The harness could not make or set up its network namespace."""


def ready() -> bool:
    """Whether this process is in a namespace set up for Janus (its link exists)."""
    try:
        socket.if_nametoindex(JANUS_LINK)
    except OSError:
        return False
    return True


def _unshare() -> list[str]:
    program = shutil.which("unshare")
    if program is None:
        raise NamespaceError("the unshare program (util-linux) is needed to run Janus in a namespace")
    if os.geteuid() == 0:
        return [program, "--net"]
    return [program, "--user", "--map-root-user", "--net"]


def enter(argv: list[str]) -> None:
    """Make sure the rest of this run happens in the harness's namespace: set it up when this is the
    re-executed harness, return at once when it is ready, else re-execute ``python -m bench argv``
    in a new one (this call then does not return)."""
    if os.environ.pop(INSIDE, None) == "1":
        _set_up()
        return
    if ready():
        return
    command = _unshare()
    probe = subprocess.run([*command, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise NamespaceError(
            f"cannot create a network namespace for Janus ({probe.stderr.strip()}): run as root, or enable "
            "unprivileged user namespaces"
        )
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], [*command, "--", sys.executable, "-m", "bench", *argv], {**os.environ, INSIDE: "1"})


def _set_up() -> None:
    """Bring ``lo`` up and make the veth pair described in the module's docstring."""
    if [name for _, name in socket.if_nameindex()] != ["lo"]:  # never the machine's own network
        raise NamespaceError(f"{INSIDE} is set outside a fresh network namespace")
    ip = shutil.which("ip")
    if ip is None:
        raise NamespaceError("the ip program (iproute2) is needed to set up the namespace for Janus")
    script = (
        "link set lo up\n"
        f"link add {JANUS_LINK} type veth peer name {CLIENT_LINK}\n"
        f"address add {JANUS_ADDRESS}/32 dev {JANUS_LINK}\n"
    )
    done = subprocess.run([ip, "-batch", "-"], input=script, capture_output=True, text=True)
    if done.returncode != 0:
        raise NamespaceError(f"setting up the namespace for Janus failed: {done.stderr.strip()}")
    for link, settings in SYSCTLS.items():
        for name, value in settings.items():
            Path(f"/proc/sys/net/ipv4/conf/{link}/{name}").write_text(value)
    up = f"link set {JANUS_LINK} up\nlink set {CLIENT_LINK} up\n"
    done = subprocess.run([ip, "-batch", "-"], input=up, capture_output=True, text=True)
    if done.returncode != 0:
        raise NamespaceError(f"bringing the namespace's links up failed: {done.stderr.strip()}")
