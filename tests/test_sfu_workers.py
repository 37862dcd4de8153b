"""Media in worker processes (``sfu.workers``, docs/sfu.md#workers): rooms are spread over the
workers by load, and a worker that dies takes only its own rooms, whose clients are told to
reconnect and get media again from a worker started anew."""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from config import ConfigError, load_settings
from config.settings import SfuSettings
from sfu.counters import MediaTotals
from sfu.local import WorkerLoad
from sfu.pool import least_loaded, worker_settings
from tests.rtc_clients import Participant, connect_user
from tests.server_process import ServerProcess, call, client_session, make_user, room_stats, start_server
from tests.support import until
from tests.test_recording_e2e import MEETINGS, finished, participant, receiving, recorded_meeting

RECOVERY_SECONDS = 10.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("workers")
    env = {"HUIYI_RATE_LIMITS": "off", "HUIYI_SFU_BIND_ADDRESSES": "127.0.0.1", "HUIYI_SFU_WORKERS": "2"}
    process = start_server("--data-dir", str(work / "data"), log=work / "server.log", env=env)
    yield process
    assert process.stop() == 0, process.log.read_text()[-3000:]
    assert not _workers(process), "the workers stop with the server"


def _workers(server: ServerProcess) -> dict[int, int]:
    """The server's media worker processes: pid by worker index."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        if parent == server.process.pid and b"sfu.worker" in command:
            found[int(command[command.index(b"sfu.worker") + 2])] = int(entry.name)
    return found


async def _two_rooms(server: ServerProcess, people: list[Participant]) -> tuple[list[Participant], list[Participant]]:
    """Two meetings of two publishing participants each, all decoding each other's video."""
    rooms = []
    for names in (("ann", "bo"), ("cy", "di")):
        suffix = str(time.monotonic_ns())[-6:]
        host = await connect_user(server.url, names[0] + suffix, people=people)
        guest = await connect_user(server.url, names[1] + suffix, host, people=people)
        rooms.append([host, guest])
    for person in people:
        await person.publish()
    await until(
        lambda: all(a.receives_video(b.user_id, 10) for room in rooms for a in room for b in room if a is not b),
        "everyone to decode the video of the other participant of their meeting",
        20,
    )
    return rooms[0], rooms[1]


async def test_meetings_run_on_different_workers(server: ServerProcess, people: list[Participant]) -> None:
    first, second = await _two_rooms(server, people)
    where = [room_stats(server.url, room[0].meeting_id, room[0].token)["worker"] for room in (first, second)]
    assert sorted(where) == [0, 1], where
    assert set(_workers(server)) == {0, 1}


async def test_a_killed_worker_takes_only_its_rooms_and_they_come_back(
    server: ServerProcess, people: list[Participant]
) -> None:
    doomed, spared = await _two_rooms(server, people)
    index = room_stats(server.url, doomed[0].meeting_id, doomed[0].token)["worker"]
    assert room_stats(server.url, spared[0].meeting_id, spared[0].token)["worker"] == 1 - index
    watched = spared[0].video_from(spared[1].user_id)
    assert watched is not None
    watched.captured = []  # every frame the spared room decodes from here on, with its arrival
    pid = _workers(server)[index]
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    await until(
        lambda: (
            all(p.rebuilds for p in doomed)
            and all(a.receives_video(b.user_id, 5) for a in doomed for b in doomed if a is not b)
        ),
        "the killed worker's meeting to receive video again",
        RECOVERY_SECONDS,
    )
    back = time.monotonic() - killed
    print(f"the killed worker's meeting decoded video again {back:.1f} s after the kill")
    assert all(any(m["type"] == "reconnect" for m in p.messages) for p in doomed)
    # The other meeting went on as if nothing happened: no reconnect, no gap in its video.
    assert not any(p.rebuilds for p in spared)
    arrivals = [arrival for arrival, _ in watched.captured]
    assert arrivals and arrivals[-1] > killed + back - 1.0, "the spared meeting's video still arrives"
    gap = max(later - earlier for earlier, later in itertools.pairwise(arrivals))
    print(f"longest gap in the spared meeting's video across the kill: {gap * 1000:.0f} ms")
    assert gap < 1.0
    await until(lambda: _workers(server).get(index) not in (None, pid), "the worker to be started again", 10)


async def test_a_meeting_on_a_worker_is_recorded(server: ServerProcess, people: list[Participant]) -> None:
    url = server.url
    host_token, host_id = make_user(url, f"rec{time.monotonic_ns() % 10**6}")
    meeting_id = recorded_meeting(url, host_token)
    host = Participant(url, host_token, host_id, meeting_id)
    people.append(host)
    await host.connect()
    guest = await participant(url, f"guest{time.monotonic_ns() % 10**6}", meeting_id, people, host_token)
    for person in (host, guest):
        await person.publish()
    await receiving(host, guest)
    await receiving(guest, host)
    assert room_stats(url, meeting_id, host_token)["worker"] in (0, 1)
    async with client_session() as http:
        path = f"{url}{MEETINGS}/{meeting_id}/recording"
        status, body = await call(http, "POST", path + "/start", host_token, json={"composite": False})
        assert status == 201, body
        recording_id = body["data"]["recording_id"]
        started = time.monotonic()
        await until(lambda: time.monotonic() > started + 3, "3 s of recording", 5, interval=0.1)
        status, body = await call(http, "POST", path + "/stop", host_token)
        assert status == 200, body
        recording = await finished(http, url, host_token, recording_id)
    tracks = {(t["user_id"], t["kind"]): t for t in recording["tracks"]}
    assert set(tracks) == {(user, kind) for user in (host_id, guest.user_id) for kind in ("audio", "video")}
    assert all(track["frames"] > 0 and track["reason"] == "stopped" for track in tracks.values()), tracks


def test_workers_end_with_a_server_that_is_killed(tmp_path: Path) -> None:
    env = {"HUIYI_SFU_BIND_ADDRESSES": "127.0.0.1", "HUIYI_SFU_WORKERS": "1"}
    server = start_server("--data-dir", str(tmp_path / "data"), log=tmp_path / "server.log", env=env)
    try:
        pids = list(_workers(server).values())
        assert len(pids) == 1
    finally:
        server.process.kill()
        server.process.wait()
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pids[0]}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pids[0]}").exists(), "a worker whose server died ends too"


def _load(worker: int, packets_per_second: float) -> WorkerLoad:
    return WorkerLoad(worker, 0, totals=MediaTotals(), packets_per_second=packets_per_second)


def test_a_room_goes_to_the_worker_forwarding_fewest_packets_not_the_one_with_fewest_rooms() -> None:
    loads = [_load(0, 9000.0), _load(1, 200.0), _load(2, 4000.0)]
    # Worker 1 runs three small rooms, worker 0 one large one: load decides, not the count.
    assert least_loaded(loads, {0: 1, 1: 3, 2: 1}, {}).worker == 1
    # Alike in load (all idle, say just started): the fewest rooms, then the lowest index.
    idle = [_load(0, 0.0), _load(1, 0.0), _load(2, 0.0)]
    assert least_loaded(idle, {0: 1, 2: 1}, {}).worker == 1
    assert least_loaded(idle, {}, {}).worker == 0
    # A room placed a moment ago counts as an average room (2640 packets/s here) before its
    # traffic shows: the next room goes elsewhere, not to the same worker that looked idlest.
    assert least_loaded(loads, {0: 1, 1: 3, 2: 1}, {1: 1}).worker == 1
    # The rate left over from rooms that just ended (worker 0's) does not send every new room to
    # the other worker either.
    assert least_loaded([_load(0, 300.0), _load(1, 0.0)], {1: 1}, {1: 1}).worker == 0


def test_workers_default_to_one_per_core_and_zero_keeps_media_in_process() -> None:
    assert load_settings(None, environ={}).sfu.workers == (os.cpu_count() or 1)
    assert load_settings(None, environ={"HUIYI_SFU_WORKERS": "0"}).sfu.workers == 0
    with pytest.raises(ConfigError, match="at least one port"):
        environ = {"HUIYI_SFU_WORKERS": "3", "HUIYI_SFU_PORT_MIN": "5000", "HUIYI_SFU_PORT_MAX": "5001"}
        load_settings(None, environ=environ)


def test_each_worker_has_ports_of_its_own() -> None:
    settings = SfuSettings(ipv6=False, publish_bitrate=3_000_000, simulated_loss=0.0, port_min=40000, port_max=40099)
    slices = [worker_settings(settings, index, 4) for index in range(4)]
    ranges = [(s.port_min, s.port_max) for s in slices]
    assert ranges == [(40000, 40024), (40025, 40049), (40050, 40074), (40075, 40099)]
    assert all(s.workers == 0 for s in slices)
    shared = SfuSettings(ipv6=False, publish_bitrate=3_000_000, simulated_loss=0.0, udp_port=7882, tcp_port=7881)
    assert [(w.udp_port, w.tcp_port) for w in (worker_settings(shared, i, 2) for i in range(2))] == [
        (7882, 7881),
        (7883, 7882),
    ]
