"""A shaped link in front of the subscribers (``python -m bench --link-cap KBIT``): how a server adapts
what it sends to a subscriber whose downlink narrows, then widens again.

The run happens in the harness's own network namespace (bench/netns.py). There the run makes a veth
pair: NEAR_LINK stays in that namespace with NEAR_ADDRESS, FAR_LINK goes into a namespace of the
client worker that holds the subscribers behind the link, which made it for itself when it started
(so it goes when that worker ends, the pair with it, however the run ends). Those subscribers reach
the server (its HTTP API and its media, on 0.0.0.0 and NEAR_ADDRESS in the run's namespace) only
across the pair; every other client stays on 127.0.0.1. On its schedule the run caps what flows
towards them with ``tc tbf`` on NEAR_LINK (a bucket of a few packets and a queue of QUEUE_LATENCY_MS,
as tests/links.py does: tbf is the shaper that works here, netem is not available), then lifts it.

Each subscriber behind the link answers as a browser does (transport-wide feedback, bench/feedback.py)
and traces its video (bench/received.py). ``figures`` turns the traces into: the time to adapt down
(cap set -> the first complete key frame of a layer whose bitrate fits the cap), the time to adapt up
(cap lifted -> the first complete key frame of the top layer), freezes, loss and the received bitrate
and resolution over time against the cap."""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import shutil
import signal
import statistics
import subprocess
import time
from typing import TYPE_CHECKING, Any

from bench.clip import layer_sizes
from bench.received import BIN_NS
from sfu.network import Network

if TYPE_CHECKING:
    from bench.client import ClientResult
    from bench.harness import Figures, Scenario

NEAR_LINK, FAR_LINK = "shaped0", "shaped1"
NEAR_ADDRESS, FAR_ADDRESS = "10.214.0.1", "10.214.0.2"  # a /30 of the run's own namespace
FAR_NETWORK = Network(bind=(FAR_ADDRESS,))
BURST_BYTES = 4000  # tbf's bucket: a few packets, so a burst above the rate is queued, not passed
QUEUE_LATENCY_MS = 400  # what tbf queues before it drops: a slow access link's buffer
DEFAULT_SCHEDULE = (5.0, 15.0, 15.0)  # seconds at full speed, capped, lifted again
FREEZE_NS = 200_000_000  # longer than this without a complete frame (30 fps: 6 frames) is a freeze
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1


class LinkError(RuntimeError):
    """The run could not make, move or shape its link."""


def _run(command: list[str], stdin: str | None = None) -> None:
    done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=10)
    if done.returncode:
        raise LinkError(f"{' '.join(command)} failed: {done.stderr.strip()}")


def end_with_parent() -> None:
    """Have this process (a client worker of a shaped-link run) end when the harness does, however
    the harness ends: the run's namespaces and link go only once every process in them has."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def enter_own_namespace() -> None:
    """Move this process (a client worker, still single-threaded) into a new network namespace, which
    ends with it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) for the shaped link failed")


def far_url(url: str) -> str:
    """The server's URL as the subscribers behind the link reach it."""
    return url.replace("127.0.0.1", NEAR_ADDRESS, 1)


class Link:
    """The shaped link of one run: made at once (so a server started next can offer media on it),
    handed to the worker behind it with ``attach``, capped and lifted by ``follow``."""

    def __init__(self, cap_kbit: int) -> None:
        missing = [tool for tool in ("ip", "tc", "nsenter") if shutil.which(tool) is None]
        if missing:
            raise LinkError(f"a shaped link needs {', '.join(missing)} (iproute2, util-linux)")
        self.cap_kbit = cap_kbit
        self.capped = False
        self.moments: dict[str, int] = {}  # start, capped, lifted, end: monotonic ns
        script = (
            f"link add {NEAR_LINK} type veth peer name {FAR_LINK}\n"
            f"address add {NEAR_ADDRESS}/30 dev {NEAR_LINK}\n"
            f"link set {NEAR_LINK} up\n"
        )
        _run(["ip", "-batch", "-"], script)

    def attach(self, pid: int) -> None:
        """Move the far end into the namespace of process ``pid`` and bring it up there."""
        _run(["ip", "link", "set", FAR_LINK, "netns", str(pid)])
        inside = f"link set lo up\naddress add {FAR_ADDRESS}/30 dev {FAR_LINK}\nlink set {FAR_LINK} up\n"
        _run(["nsenter", f"--net=/proc/{pid}/ns/net", "ip", "-batch", "-"], inside)

    def cap(self) -> None:
        rate = f"{self.cap_kbit}kbit"
        shape = ["tbf", "rate", rate, "burst", str(BURST_BYTES), "latency", f"{QUEUE_LATENCY_MS}ms"]
        _run(["tc", "qdisc", "add", "dev", NEAR_LINK, "root", *shape])
        self.capped = True

    def lift(self) -> None:
        if self.capped:
            self.capped = False
            # The link is gone with its worker when the run ended first: nothing left to lift then.
            subprocess.run(["tc", "qdisc", "del", "dev", NEAR_LINK, "root"], capture_output=True, timeout=10)

    async def follow(self, scenario: Scenario, start_ns: int) -> None:
        """Cap the link and lift it again on the scenario's schedule, noting when each was done."""
        free, capped, lifted = scenario.link_schedule or DEFAULT_SCHEDULE
        self.moments["start"] = start_ns
        self.moments["end"] = start_ns + int((scenario.ramp_up + free + capped + lifted) * 1e9)
        await _until(start_ns + int((scenario.ramp_up + free) * 1e9))
        self.cap()
        self.moments["capped"] = time.monotonic_ns()
        await _until(self.moments["capped"] + int(capped * 1e9))
        self.lift()
        self.moments["lifted"] = time.monotonic_ns()

    def close(self) -> None:
        """Delete the pair if it is still here (it goes by itself with the worker behind it)."""
        subprocess.run(["ip", "link", "del", NEAR_LINK], capture_output=True, timeout=10)


async def _until(moment_ns: int) -> None:
    await asyncio.sleep(max(0.0, (moment_ns - time.monotonic_ns()) / 1e9))


# figures ------------------------------------------------------------------------------------------


def _seconds(ns: int | None) -> float | None:
    return None if ns is None else round(ns / 1e9, 2)


def _size_at(sizes: list[tuple[int, int, int]], moment: int) -> tuple[int, int] | None:
    found = None
    for when, width, height in sizes:
        if when > moment:
            break
        found = (width, height)
    return found


def _kbit(bins: dict[int, int], start: int, end: int) -> float | None:
    if end <= start:
        return None
    total = sum(size for key, size in bins.items() if start <= key * BIN_NS < end)
    return round(total * 8 / ((end - start) / 1e9) / 1000, 1)


def _freezes(frames: list[int], end: int) -> list[int]:
    """The gaps longer than FREEZE_NS between these frames, and from the last one to the end."""
    if not frames:
        return []
    gaps = [b - a for a, b in itertools.pairwise(frames)] + [end - frames[-1]]
    return [gap for gap in gaps if gap > FREEZE_NS]


def _subscriber(
    result: ClientResult, moments: dict[str, int], fit_height: int | None, top: tuple[int, int]
) -> dict[str, Any]:
    trace = result.video
    assert trace is not None
    start, end = moments["start"], moments["end"]
    capped, lifted = moments.get("capped", end), moments.get("lifted", end)
    down = next(
        (
            when - capped
            for when, _, height in trace.sizes
            if capped <= when < lifted and fit_height is not None and height <= fit_height
        ),
        None,
    )
    left_top = any(capped <= when < lifted and (width, height) != top for when, width, height in trace.sizes)
    up = next((when - lifted for when, width, height in trace.sizes if when >= lifted and (width, height) == top), None)
    frames = trace.complete
    freezes = _freezes(frames, end)
    shown = _freezes(trace.decodable, end)
    timeline = []
    for second in range(int((end - start) / 1e9)):
        left, right = start + second * 1_000_000_000, start + (second + 1) * 1_000_000_000
        size = _size_at(trace.sizes, right)
        timeline.append(
            {
                "t": second + 1,
                "capped": capped < right and left < lifted,
                "kbit_per_second": _kbit(trace.bins, left, right),
                "frames": sum(1 for when in frames if left <= when < right),
                "decodable_frames": sum(1 for when in trace.decodable if left <= when < right),
                "size": f"{size[0]}x{size[1]}" if size else None,
            }
        )
    phases = {"free": (start + 1_000_000_000, capped), "capped": (capped, lifted), "lifted": (lifted, end)}
    return {
        "feedback": result.feedback,
        "adapt_down_s": _seconds(down),
        "adapt_up_s": _seconds(up) if left_top else None,
        "left_top_layer": left_top,
        "longest_freeze_s": _seconds(max(freezes, default=0)),
        "freeze_total_s": _seconds(sum(freezes)),
        "freezes": len(freezes),
        "complete_frames": len(frames),
        "decodable_longest_freeze_s": _seconds(max(shown, default=0)),
        "decodable_freeze_total_s": _seconds(sum(shown)),
        "decodable_frames": len(trace.decodable),
        "video_packets_expected": trace.video_expected,
        "video_packets_lost": max(0, trace.video_expected - trace.video_received),
        "kbit_per_second": {name: _kbit(trace.bins, *window) for name, window in phases.items()},
        "size_at_end": {
            name: (lambda s: f"{s[0]}x{s[1]}" if s else None)(_size_at(trace.sizes, window[1]))
            for name, window in phases.items()
        },
        "timeline": timeline,
    }


def figures(scenario: Scenario, results: list[ClientResult], moments: dict[str, int]) -> dict[str, Any]:
    """What the subscribers behind the link got (see the module's docstring and LEGEND). With several,
    the times to adapt are the slowest one's (``None`` if any never did), the longest freeze the
    longest of any, totals and rates their mean; the timeline is the first subscriber's."""
    cap = (scenario.link_cap_kbit or 0) * 1000
    sizes = layer_sizes()
    top = max(((w, h) for w, h, _ in sizes.values()), key=lambda size: size[1])
    fitting = [height for _, height, bitrate in sizes.values() if bitrate <= cap]
    fit_height = max(fitting) if fitting and max(fitting) < top[1] else None
    each = [_subscriber(result, moments, fit_height, top) for result in results if result.video is not None]

    def slowest(name: str) -> float | None:
        values = [one[name] for one in each]
        return None if not values or None in values else max(values)

    def mean(name: str) -> float | None:
        return round(statistics.mean(one[name] for one in each), 2) if each else None

    expected = sum(one["video_packets_expected"] for one in each)
    lost = sum(one["video_packets_lost"] for one in each)
    first = each[0] if each else {}
    return {
        "cap_kbit": scenario.link_cap_kbit,
        "schedule_s": list(scenario.link_schedule or DEFAULT_SCHEDULE),
        "fitting_layer_height": fit_height,
        "subscribers": len(each),
        "feedback": sorted({one["feedback"] for one in each}),
        "adapt_down_s": slowest("adapt_down_s"),
        "adapt_up_s": slowest("adapt_up_s"),
        "left_top_layer": all(one["left_top_layer"] for one in each) if each else False,
        "longest_freeze_s": max((one["longest_freeze_s"] for one in each), default=None),
        "freeze_total_s": mean("freeze_total_s"),
        "freezes": mean("freezes"),
        "decodable_longest_freeze_s": max((one["decodable_longest_freeze_s"] for one in each), default=None),
        "decodable_freeze_total_s": mean("decodable_freeze_total_s"),
        "video_loss_percent": round(100 * lost / expected, 2) if expected else None,
        "kbit_per_second": first.get("kbit_per_second"),
        "size_at_end": first.get("size_at_end"),
        "timeline": first.get("timeline", []),
        "each": [{k: v for k, v in one.items() if k != "timeline"} for one in each],
    }


# tables -------------------------------------------------------------------------------------------


LEGEND = """\
Columns: target = the server; feedback = what the subscribers behind the link told the server of it:
transport-cc (transport-wide feedback, as Chromium sends when the server offers it) or none; cap = the link's
rate while capped (tc tbf, 400 ms queue) in front of the subscribers behind it, for free/capped/lifted seconds;
down s = cap set -> the first complete key frame of a layer whose target bitrate fits the cap ("never": none
within the capped phase); up s = cap lifted -> the first complete key frame of the top layer ("n/a": it never
left the top layer); freezes = gaps of more than 200 ms between complete frames (every packet of the frame
arrived), counted from the first frame to the end: their number, the longest, and their total; undecodable =
the same for decodable frames (a complete key frame, or a complete frame with nothing missing since the last
decodable one): the time a decoder would have shown a frozen picture; loss % = video packets never received,
of those the server sent (the sequence numbers from the first to the highest; the synthetic subscribers send
no NACK, so nothing is retransmitted); kbit/s = everything received on the link (video, audio, probes) in each
phase; size = the resolution of the last complete key frame at each phase's end (read from the VP8 payload
header). With several subscribers behind the link: the slowest adaptation, the longest freeze, the mean of
the rest."""

TIMELINE_NOTE = """\
Timeline: per second since the run started, the link's state (cap in kbit/s, or free), then for each target
what its (first) subscriber behind the link received: kbit/s, complete / decodable frames, the resolution of
its last complete key frame. A second is capped if the cap held for any part of it."""


def _num(value: Any, never: str = "-") -> str:
    return never if value is None else f"{value:g}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    return "\n".join(
        "| " + " | ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)) + " |"
        for row in [header, ["-" * width for width in widths], *rows]
    )


def render(runs: dict[str, list[Figures]]) -> str:
    """One row per target, the legend, and the targets' timelines side by side."""
    done = [(target, figures) for target, series in runs.items() for figures in series if figures.shaped]
    rows = []
    for target, figures in done:
        shaped = figures.shaped or {}
        kbit, sizes = shaped.get("kbit_per_second") or {}, shaped.get("size_at_end") or {}
        phases = ("free", "capped", "lifted")
        rows.append(
            [
                target,
                ", ".join(shaped["feedback"]) or "-",
                f"{shaped['cap_kbit']} ({'/'.join(f'{s:g}' for s in shaped['schedule_s'])} s)",
                _num(shaped["adapt_down_s"], "never"),
                _num(shaped["adapt_up_s"], "n/a" if not shaped["left_top_layer"] else "never"),
                f"{_num(shaped['freezes'])} / {_num(shaped['longest_freeze_s'])} / {_num(shaped['freeze_total_s'])}",
                f"{_num(shaped['decodable_longest_freeze_s'])} / {_num(shaped['decodable_freeze_total_s'])}",
                _num(shaped["video_loss_percent"]),
                " / ".join(_num(kbit.get(phase)) for phase in phases),
                " / ".join(sizes.get(phase) or "-" for phase in phases),
                ", ".join(figures.errors[:2]) or "-",
            ]
        )
    header = [
        "target",
        "feedback",
        "cap kbit/s (free/capped/lifted s)",
        "down s",
        "up s",
        "freezes n / longest s / total s",
        "undecodable longest / total s",
        "loss %",
        "kbit/s free / capped / lifted",
        "size free / capped / lifted",
        "errors",
    ]
    parts = [_table(header, rows), LEGEND]
    if done:
        length = max(len((f.shaped or {}).get("timeline", [])) for _, f in done)
        lines = []
        for index in range(length):
            cells: list[str] = []
            link = "-"
            for _, figures in done:
                timeline = (figures.shaped or {}).get("timeline", [])
                if index < len(timeline):
                    second = timeline[index]
                    link = str(figures.shaped["cap_kbit"]) if second["capped"] else "free"  # type: ignore[index]
                    frames = f"{second['frames']} / {second['decodable_frames']}"
                    cells += [_num(second["kbit_per_second"]), frames, second["size"] or "-"]
                else:
                    cells += ["", "", ""]
            lines.append([str(index + 1), link, *cells])
        header = ["t s", "link"] + [f"{t} {c}" for t, _ in done for c in ("kbit/s", "frames / decodable", "size")]
        parts += [_table(header, lines), TIMELINE_NOTE]
    return "\n\n".join(parts)
