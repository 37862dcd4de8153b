"""/api/v1/media and /api/v1/ffmpeg with real media made in the test, results checked with PyAV."""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import FormData
from PIL import Image

from control.context import STORAGE, STORE
from control.envelope import utc_now
from control.storage import LEGACY_SCRATCH_IDLE_SECONDS, LocalStorage
from control.store.media import MeetingGone
from media.samples import write_clip
from tests.conftest import Api
from tests.support import JOB_DEADLINE, file_form, finished, image_bytes, result_path, streams, until, upload, uploaded


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("samples")
    made = {
        "clip.mp4": write_clip(folder / "clip.mp4", seconds=2),
        "small.webm": write_clip(folder / "small.webm", seconds=1, width=160, height=120),
        "tone.wav": write_clip(folder / "tone.wav", seconds=1.5),
    }
    found = {name: path.read_bytes() for name, path in made.items()}
    found["picture.png"] = image_bytes("PNG", (64, 48))
    found["slides.pdf"] = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n"
    found["notes.txt"] = "agenda: 一, two, three\n".encode()
    return found


@pytest.mark.parametrize(
    ("name", "file_type", "mime", "duration"),
    [
        ("clip.mp4", "video", "video/mp4", 2.0),
        ("small.webm", "video", "video/webm", 1.0),
        ("tone.wav", "audio", "audio/wav", 1.5),
        ("picture.png", "image", "image/png", None),
        ("slides.pdf", "document", "application/pdf", None),
        ("notes.txt", "document", "text/plain", None),
    ],
)
async def test_upload_detects_the_type_from_content(
    api: Api, samples: dict[str, bytes], name: str, file_type: str, mime: str, duration: float | None
) -> None:
    owner = await api.account()
    # The name and declared type say nothing true; the content decides.
    data = await uploaded(api, owner, samples[name], "../../../etc/passwd.exe")
    assert data["file_type"] == file_type and data["mime_type"] == mime
    assert data["size"] == len(samples[name]) and data["user_id"] == owner.id
    assert data["file_name"] == "passwd.exe"
    assert (data["duration"] is None) == (duration is None)
    if duration is not None:
        assert abs(data["duration"] - duration) < 0.1


async def test_download_whole_and_by_range(api: Api, samples: dict[str, bytes]) -> None:
    owner = await api.account()
    data = await uploaded(api, owner, samples["clip.mp4"], "Our clip (final).mp4")
    whole = await api.client.get(data["file_url"], headers=owner.auth)
    assert whole.status == 200 and await whole.read() == samples["clip.mp4"]
    assert whole.headers["Content-Type"] == "video/mp4"
    assert whole.headers["Content-Disposition"] == "attachment; filename*=UTF-8''Our%20clip%20%28final%29.mp4"
    part = await api.client.get(data["file_url"], headers={**owner.auth, "Range": "bytes=100-199"})
    assert part.status == 206 and await part.read() == samples["clip.mp4"][100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(samples['clip.mp4'])}"
    tail = await api.client.get(data["file_url"], headers={**owner.auth, "Range": "bytes=-10"})
    assert await tail.read() == samples["clip.mp4"][-10:]


TEXT = b"0123456789" * 10
HUGE = "9" * 5000


RANGE_CASES: list[tuple[str, int, str | None, bytes | None]] = [
    ("bytes=0-0", 206, "bytes 0-0/100", TEXT[:1]),
    ("bytes=90-", 206, "bytes 90-99/100", TEXT[90:]),
    ("bytes=95-1000", 206, "bytes 95-99/100", TEXT[95:]),
    ("bytes=-1000", 206, "bytes 0-99/100", TEXT),
    (f"bytes=-{HUGE}", 206, "bytes 0-99/100", TEXT),
    ("BYTES=1-2", 206, "bytes 1-2/100", TEXT[1:3]),
    # A well-formed range that selects nothing is refused with the size ...
    ("bytes=-0", 416, "bytes */100", None),
    ("bytes=100-", 416, "bytes */100", None),
    ("bytes=100-200", 416, "bytes */100", None),
    (f"bytes={HUGE}-", 416, "bytes */100", None),
    # ... one that is malformed, in another unit or asks for several parts is ignored.
    ("bytes=5-2", 200, None, TEXT),
    ("bytes=0-1,5-6", 200, None, TEXT),
    ("items=0-5", 200, None, TEXT),
    ("bytes=abc", 200, None, TEXT),
    ("bytes=-", 200, None, TEXT),
]


async def test_download_ranges_follow_rfc_9110(api: Api) -> None:
    owner = await api.account()
    data = await uploaded(api, owner, TEXT, "digits.txt")
    for range_header, status, content_range, body in RANGE_CASES:
        answer = await api.client.get(data["file_url"], headers={**owner.auth, "Range": range_header})
        assert (answer.status, answer.headers.get("Content-Range")) == (status, content_range), range_header[:20]
        if body is not None:
            assert await answer.read() == body, range_header[:20]
        else:
            assert (await answer.json())["code"] == 416, "errors stay in the envelope"


async def test_download_range_applies_only_while_if_range_holds(api: Api) -> None:
    owner = await api.account()
    data = await uploaded(api, owner, TEXT, "digits.txt")
    whole = await api.client.get(data["file_url"], headers=owner.auth)
    for validator in (whole.headers["ETag"], whole.headers["Last-Modified"]):
        held = await api.client.get(
            data["file_url"], headers={**owner.auth, "Range": "bytes=0-1", "If-Range": validator}
        )
        assert held.status == 206 and await held.read() == TEXT[:2]
    for stale in ('"0-0"', "W/" + whole.headers["ETag"], "Mon, 01 Jan 2001 00:00:00 GMT", "garbage"):
        for range_header in ("bytes=0-1", "bytes=-0"):
            changed = await api.client.get(
                data["file_url"], headers={**owner.auth, "Range": range_header, "If-Range": stale}
            )
            assert changed.status == 200 and await changed.read() == TEXT


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"\x00\x01\x02garbage" * 100, 400),
        (b"", 400),
        ("truncated", 400),
    ],
)
async def test_bad_uploads_fail_with_3001(api: Api, samples: dict[str, bytes], payload: Any, status: int) -> None:
    owner = await api.account()
    data = samples["clip.mp4"][:1500] if payload == "truncated" else payload
    body = await upload(api, owner, data, "x.mp4")
    assert body["status"] == status and body["code"] == 3001
    listed = await api.call("GET", "/api/v1/media", token=owner.access)
    assert listed["data"]["total"] == 0, "nothing half-stored is listed"
    leftovers = [p for p in (api.app[STORAGE].root).rglob("*") if p.is_file()]
    assert leftovers == [], "rejected bytes are not kept"


async def test_upload_cap_and_missing_file(settings_factory: Any, make_api: Any, samples: dict[str, bytes]) -> None:
    api: Api = await make_api(settings_factory(media={"max_upload_bytes": 10_000}))
    owner = await api.account()
    body = await upload(api, owner, samples["tone.wav"], "tone.wav")
    assert body["status"] == 413 and body["code"] == 3001
    no_file = FormData()
    no_file.add_field("meeting_id", "1")
    missing = await api.call("POST", "/api/v1/media/upload", token=owner.access, data=no_file)
    assert missing["status"] == 400 and missing["code"] == 3001
    crowded = file_form(b"x" * 100, "n.txt", **{f"field{n}": "v" for n in range(40)})
    too_many = await api.call("POST", "/api/v1/media/upload", token=owner.access, data=crowded)
    assert too_many["status"] == 400 and too_many["code"] == 3001
    assert [p for p in api.app[STORAGE].root.rglob("*") if p.is_file()] == []


async def test_meeting_files_and_access(api: Api, samples: dict[str, bytes]) -> None:
    owner, member, stranger = await api.account(), await api.account(), await api.account()
    meeting = await api.call("POST", "/api/v1/meetings", token=owner.access, json={"title": "Files"})
    meeting_id = meeting["data"]["meeting_id"]
    link = {"invite_code": meeting["data"]["invite_code"]}
    await api.call("POST", f"/api/v1/meetings/{meeting_id}/join", token=member.access, json=link, expect=200)

    refused = await upload(api, stranger, samples["notes.txt"], "n.txt", meeting_id=meeting_id)
    assert refused["status"] == 403
    unknown = await upload(api, owner, samples["notes.txt"], "n.txt", meeting_id=999999)
    assert unknown["status"] == 404 and unknown["code"] == 2001
    impersonate = await upload(api, owner, samples["notes.txt"], "n.txt", user_id=stranger.id)
    assert impersonate["status"] == 403

    data = await uploaded(api, owner, samples["notes.txt"], "n.txt", meeting_id=meeting_id, user_id=owner.id)
    assert data["meeting_id"] == meeting_id
    file_id = data["file_id"]
    listed = await api.call("GET", f"/api/v1/media?meeting_id={meeting_id}", token=member.access, expect=200)
    assert [f["file_id"] for f in listed["data"]["items"]] == [file_id]
    assert (await api.call("GET", f"/api/v1/media?meeting_id={meeting_id}", token=stranger.access))["status"] == 403
    assert (await api.call("GET", "/api/v1/media", token=member.access))["data"]["total"] == 0
    assert (await api.call("GET", "/api/v1/media?file_type=document", token=owner.access))["data"]["total"] == 1
    assert (await api.call("GET", "/api/v1/media?file_type=video", token=owner.access))["data"]["total"] == 0

    await api.call("GET", f"/api/v1/media/info/{file_id}", token=member.access, expect=200)
    assert (await api.client.get(data["file_url"], headers=member.auth)).status == 200
    for method, path in (("GET", f"/api/v1/media/info/{file_id}"), ("DELETE", f"/api/v1/media/{file_id}")):
        assert (await api.call(method, path, token=stranger.access))["status"] == 403
    assert (await api.call("GET", data["file_url"], token=stranger.access))["status"] == 403
    assert (await api.call("DELETE", f"/api/v1/media/{file_id}", token=member.access))["status"] == 403

    record = await api.app[STORE].media.get(file_id)
    assert record is not None
    stored = api.app[STORAGE].local_path(record.storage_key)
    assert stored.is_file()
    await api.call("DELETE", f"/api/v1/media/{file_id}", token=owner.access, expect=200)
    assert not stored.exists(), "the bytes go with the record"
    gone = await api.call("GET", f"/api/v1/media/info/{file_id}", token=owner.access)
    assert gone["status"] == 404 and gone["code"] == 3002


async def test_every_job_kind_runs_to_completion(api: Api, samples: dict[str, bytes]) -> None:
    owner = await api.account()
    clip = (await uploaded(api, owner, samples["clip.mp4"], "clip.mp4"))["file_id"]
    small = (await uploaded(api, owner, samples["small.webm"], "small.webm"))["file_id"]
    tone = (await uploaded(api, owner, samples["tone.wav"], "tone.wav"))["file_id"]

    async def run(path: str, body: dict[str, Any]) -> Path:
        started = await api.call("POST", path, token=owner.access, json=body, expect=201)
        assert started["data"]["status"] == "queued" and started["data"]["progress"] == 0
        job = await finished(api, owner, started["data"]["job_id"])
        assert job["progress"] == 100 and job["finished_at"] is not None
        return await result_path(api, job)

    found, duration = streams(
        await run("/api/v1/ffmpeg/transcode", {"file_id": clip, "format": "webm", "video_codec": "vp9", "width": 160})
    )
    assert found == [("video", "vp9", 160, 120), ("audio", "opus", None, None)] and abs(duration - 2) < 0.1
    found, _ = streams(await run("/api/v1/ffmpeg/transcode", {"file_id": small, "format": "mp4", "height": 240}))
    assert found == [("video", "h264", 320, 240), ("audio", "aac", None, None)]
    found, duration = streams(await run("/api/v1/ffmpeg/extract-audio", {"file_id": clip, "format": "opus"}))
    assert found == [("audio", "opus", None, None)] and abs(duration - 2) < 0.1
    found, _ = streams(await run("/api/v1/ffmpeg/extract-audio", {"file_id": small, "format": "wav"}))
    assert found == [("audio", "pcm_s16le", None, None)]
    found, duration = streams(await run("/api/v1/ffmpeg/extract-video", {"file_id": clip}))
    assert found == [("video", "h264", 320, 240)] and abs(duration - 2) < 0.1
    found, duration = streams(await run("/api/v1/ffmpeg/merge", {"file_ids": [clip, small], "mode": "concat"}))
    assert found == [("video", "h264", 320, 240), ("audio", "aac", None, None)] and abs(duration - 3) < 0.15
    found, _ = streams(await run("/api/v1/ffmpeg/merge", {"file_ids": [clip, tone], "mode": "mux"}))
    assert [kind for kind, *_ in found] == ["video", "audio"]
    thumb = await run("/api/v1/ffmpeg/thumbnail", {"file_id": clip, "time": 1.0, "format": "png", "width": 100})
    with Image.open(thumb) as image:
        assert image.format == "PNG" and image.size == (100, 75)
        # The clip's yellow square crosses the picture at constant speed (media/samples.py): at 1 s of
        # 2 s it spans x = 143..183 of 320, so its centre in the 100-wide thumbnail is near 51.
        rgb = image.convert("RGB")
        yellow = [x for x in range(100) if (lambda p: p[0] > 180 and p[1] > 150 and p[2] < 100)(rgb.getpixel((x, 31)))]
        assert yellow and abs((yellow[0] + yellow[-1]) / 2 - 51) <= 4, yellow
    mine = await api.call("GET", "/api/v1/media?file_type=image", token=owner.access)
    assert mine["data"]["items"][0]["mime_type"] == "image/png", "outputs become the caller's files"


async def test_process_routes_to_the_same_jobs(api: Api, samples: dict[str, bytes]) -> None:
    owner = await api.account()
    clip = (await uploaded(api, owner, samples["clip.mp4"], "clip.mp4"))["file_id"]
    started = await api.call(
        "POST", "/api/v1/media/process", token=owner.access, json={"operation": "thumbnail", "file_id": clip}
    )
    assert started["status"] == 201 and started["data"]["kind"] == "thumbnail"
    thumb = await result_path(api, await finished(api, owner, started["data"]["job_id"]))
    with Image.open(thumb) as image:
        assert image.format == "JPEG" and image.size == (320, 240)
    unknown = await api.call("POST", "/api/v1/media/process", token=owner.access, json={"operation": "explode"})
    assert unknown["status"] == 400
    wrong = await api.call(
        "POST", "/api/v1/media/process", token=owner.access, json={"operation": "transcode", "file_id": clip}
    )
    assert wrong["status"] == 400 and wrong["data"]["errors"][0]["field"] == "format"


async def test_jobs_refuse_foreign_unknown_and_unsuitable_files(api: Api, samples: dict[str, bytes]) -> None:
    owner, stranger = await api.account(), await api.account()
    clip = (await uploaded(api, owner, samples["clip.mp4"], "clip.mp4"))["file_id"]
    tone = (await uploaded(api, owner, samples["tone.wav"], "tone.wav"))["file_id"]
    notes = (await uploaded(api, owner, samples["notes.txt"], "n.txt"))["file_id"]
    foreign = await api.call("POST", "/api/v1/ffmpeg/extract-video", token=stranger.access, json={"file_id": clip})
    assert foreign["status"] == 403
    missing = await api.call("POST", "/api/v1/ffmpeg/extract-video", token=owner.access, json={"file_id": "0" * 32})
    assert missing["status"] == 404 and missing["code"] == 3002
    for path, body, reason in (
        ("/api/v1/ffmpeg/thumbnail", {"file_id": tone}, "is audio; this job needs video"),
        ("/api/v1/ffmpeg/transcode", {"file_id": notes, "format": "mp4"}, "is document; this job needs audio or video"),
        ("/api/v1/ffmpeg/transcode", {"file_id": clip, "format": "mp4", "video_codec": "vp9"}, "mp4 takes video_codec"),
        ("/api/v1/ffmpeg/merge", {"file_ids": [clip], "mode": "concat"}, "at least 2 items"),
        ("/api/v1/ffmpeg/merge", {"file_ids": [clip, tone, tone], "mode": "mux"}, "mux takes exactly"),
        ("/api/v1/ffmpeg/transcode", {"file_id": "../../etc/passwd", "format": "mp4"}, "at least 32 characters"),
    ):
        refused = await api.call("POST", path, token=owner.access, json=body, expect=400)
        said = refused["message"] + " ".join(e["message"] for e in (refused["data"] or {}).get("errors", []))
        assert reason in said, (body, refused)
    job = await api.call("POST", "/api/v1/ffmpeg/extract-video", token=owner.access, json={"file_id": clip})
    peek = await api.call("GET", f"/api/v1/ffmpeg/job/{job['data']['job_id']}/status", token=stranger.access)
    assert peek["status"] == 404
    await finished(api, owner, job["data"]["job_id"])


async def test_corrupt_input_fails_the_job_not_the_worker(api: Api, samples: dict[str, bytes]) -> None:
    owner = await api.account()
    clip = await uploaded(api, owner, samples["clip.mp4"], "clip.mp4")
    record = await api.app[STORE].media.get(clip["file_id"])
    assert record is not None
    stored = api.app[STORAGE].local_path(record.storage_key)
    stored.write_bytes(samples["clip.mp4"][:800] + b"\xde\xad" * 5000)  # damaged on disk after upload
    started = await api.call(
        "POST", "/api/v1/ffmpeg/transcode", token=owner.access, json={"file_id": clip["file_id"], "format": "webm"}
    )
    job = await finished(api, owner, started["data"]["job_id"])
    assert job["status"] == "failed" and job["error"] and "input" in job["error"]
    good = await uploaded(api, owner, samples["small.webm"], "small.webm")
    again = await api.call(
        "POST", "/api/v1/ffmpeg/extract-audio", token=owner.access, json={"file_id": good["file_id"]}
    )
    assert (await finished(api, owner, again["data"]["job_id"]))["status"] == "succeeded"


async def test_api_stays_responsive_while_transcoding(api: Api, tmp_path: Path) -> None:
    owner = await api.account()
    long_clip = write_clip(tmp_path / "long.mp4", seconds=20, width=640, height=360).read_bytes()
    clip = await uploaded(api, owner, long_clip, "long.mp4")

    async def latencies(count: int) -> list[float]:
        measured = []
        for _ in range(count):
            started = time.perf_counter()
            await api.call("GET", "/api/v1/users/profile", token=owner.access, expect=200)
            measured.append(time.perf_counter() - started)
        return measured

    idle = statistics.median(await latencies(30))
    job = await api.call(
        "POST",
        "/api/v1/ffmpeg/transcode",
        token=owner.access,
        json={"file_id": clip["file_id"], "format": "webm", "video_codec": "vp9"},
    )
    job_url = f"/api/v1/ffmpeg/job/{job['data']['job_id']}/status"
    busy_samples: list[float] = []
    progress_seen: list[int] = []
    deadline = time.monotonic() + JOB_DEADLINE
    while time.monotonic() < deadline:
        state = (await api.call("GET", job_url, token=owner.access))["data"]
        if state["status"] not in {"queued", "running"}:
            break
        if state["status"] == "queued":
            await asyncio.sleep(0.05)
            continue
        progress_seen.append(state["progress"])
        busy_samples += await latencies(10)
    assert len(busy_samples) >= 20, "the transcode ended before the API could be measured under load"
    assert progress_seen == sorted(progress_seen) and any(0 < p < 100 for p in progress_seen), progress_seen
    busy = statistics.median(busy_samples)
    # The work is in another process: requests may slow as the two share the machine's cores,
    # never by the job's length (a blocked loop would answer only when the job is over).
    assert busy < max(5 * idle, idle + 0.05), (idle, busy)
    assert (await finished(api, owner, job["data"]["job_id"]))["status"] == "succeeded"


async def test_a_job_outliving_its_meeting_leaves_nothing_in_a_new_one(api: Api, tmp_path: Path) -> None:
    owner = await api.account()
    meeting = await api.call("POST", "/api/v1/meetings", token=owner.access, json={"title": "Short-lived"})
    old_id = meeting["data"]["meeting_id"]
    clip_bytes = write_clip(tmp_path / "c.webm", seconds=3, width=160, height=120).read_bytes()
    clip = await uploaded(api, owner, clip_bytes, "c.webm", meeting_id=old_id)
    started = await api.call(
        "POST",
        "/api/v1/ffmpeg/transcode",
        token=owner.access,
        json={"file_id": clip["file_id"], "format": "webm", "video_codec": "vp8", "width": 320, "height": 240},
        expect=201,
    )
    job_url = f"/api/v1/ffmpeg/job/{started['data']['job_id']}/status"

    async def started_status() -> str | None:
        status = (await api.call("GET", job_url, token=owner.access))["data"]["status"]
        return status if status != "queued" else None

    assert await until(started_status, "the job started", JOB_DEADLINE, interval=0.05) == "running"

    await api.call("DELETE", f"/api/v1/meetings/{old_id}", token=owner.access, expect=200)
    replacement = await api.call("POST", "/api/v1/meetings", token=owner.access, json={"title": "Next"}, expect=201)
    new_id = replacement["data"]["meeting_id"]
    assert new_id > old_id, "a deleted meeting's id was given to a new meeting"

    job = await finished(api, owner, started["data"]["job_id"])
    assert job["status"] == "cancelled" and job["result_file_ids"] == [], job
    assert "meeting was deleted" in job["error"]
    in_new = await api.call("GET", f"/api/v1/media?meeting_id={new_id}", token=owner.access, expect=200)
    assert in_new["data"]["total"] == 0
    mine = await api.call("GET", "/api/v1/media", token=owner.access, expect=200)
    assert [f["file_id"] for f in mine["data"]["items"]] == [clip["file_id"]]
    storage = api.app[STORAGE]
    record = await api.app[STORE].media.get(clip["file_id"])
    assert record is not None and record.meeting_id is None
    await until(
        lambda: [p for p in storage.root.rglob("*") if p.is_file()] == [storage.local_path(record.storage_key)],
        "the discarded output's bytes gone",
        5,
    )
    # Any other late write for the deleted meeting is refused the same way.
    with pytest.raises(MeetingGone):
        fields = {**record.__dict__, "id": "d" * 32, "meeting_id": old_id}
        del fields["created_at"]
        await api.app[STORE].media.add(**fields)


def output_row(user_id: int, meeting_id: int | None) -> dict[str, Any]:
    return {
        "id": secrets.token_hex(16),
        "user_id": user_id,
        "meeting_id": meeting_id,
        "file_name": "out.webm",
        "storage_key": secrets.token_hex(16),
        "file_type": "video",
        "mime_type": "video/webm",
        "size": 1,
        "duration": 1.0,
    }


async def test_a_refused_completion_keeps_none_of_the_job_outputs(api: Api) -> None:
    """The runner deletes the bytes of outputs it could not keep: a row left of them would list
    a file that cannot be downloaded."""
    owner = await api.account()
    kept = await api.call("POST", "/api/v1/meetings", token=owner.access, json={"title": "Kept"}, expect=201)
    gone = await api.call("POST", "/api/v1/meetings", token=owner.access, json={"title": "Gone"}, expect=201)
    kept_id, gone_id = kept["data"]["meeting_id"], gone["data"]["meeting_id"]
    await api.call("DELETE", f"/api/v1/meetings/{gone_id}", token=owner.access, expect=200)
    store = api.app[STORE]

    async def job(node: str) -> str:
        job_id = secrets.token_hex(16)
        # Another node's job, its lease far off: the test's own server leaves it alone.
        await store.jobs.add(
            job_id=job_id,
            user_id=owner.id,
            kind="thumbnail",
            params={"inputs": []},
            node_id=node,
            lease_until=utc_now() + timedelta(hours=1),
        )
        return job_id

    async def rows(files: list[dict[str, Any]]) -> list[str]:
        return [values["id"] for values in files if await store.media.get(values["id"]) is not None]

    # Finished on a node that no longer owns the job.
    taken = await job("node-b")
    outputs = [output_row(owner.id, kept_id), output_row(owner.id, kept_id)]
    assert await store.jobs.succeed(taken, "node-a", outputs) is None
    assert await rows(outputs) == []
    assert (await store.jobs.get(taken)).status == "queued"  # type: ignore[union-attr]

    # Finished for a meeting deleted meanwhile, after an output that could have been kept.
    orphaned = await job("node-a")
    outputs = [output_row(owner.id, None), output_row(owner.id, gone_id)]
    with pytest.raises(MeetingGone):
        await store.jobs.succeed(orphaned, "node-a", outputs)
    assert await rows(outputs) == []
    assert (await store.jobs.get(orphaned)).status == "queued"  # type: ignore[union-attr]

    # Owned, meeting there: all of it is kept.
    outputs = [output_row(owner.id, None), output_row(owner.id, kept_id)]
    done = await job("node-a")
    assert await store.jobs.succeed(done, "node-a", outputs) == [values["id"] for values in outputs]
    assert await rows(outputs) == [values["id"] for values in outputs]
    assert (await store.jobs.get(done)).status == "succeeded"  # type: ignore[union-attr]


def test_clearing_scratch_leaves_other_nodes_and_live_older_layout_files(tmp_path: Path) -> None:
    node = LocalStorage(tmp_path, node_id="node-a")
    leftover = node.scratch_path(".part")
    leftover.write_bytes(b"cut upload of the previous run")
    other = LocalStorage(tmp_path, node_id="node-b").scratch_path(".part")
    other.write_bytes(b"upload in flight on another node")
    shared = tmp_path / ".scratch"
    # Of a node of the older layout: a crash's leftovers, and a job it is still writing (its
    # folder untouched for long, the file in it just written).
    idle = time.time() - LEGACY_SCRATCH_IDLE_SECONDS - 60
    stale_file, stale_folder, live_folder = shared / ("a" * 32 + ".part"), shared / ("b" * 32), shared / ("c" * 32)
    stale_file.write_bytes(b"left by a crash")
    (stale_folder / "out.webm").parent.mkdir()
    (stale_folder / "out.webm").write_bytes(b"left by a crash")
    (live_folder / "out.webm").parent.mkdir()
    (live_folder / "out.webm").write_bytes(b"being written")
    for path in (stale_file, stale_folder / "out.webm", stale_folder, live_folder):
        os.utime(path, (idle, idle))

    assert node.clear_scratch() == 3
    assert not leftover.exists() and not stale_file.exists() and not stale_folder.exists()
    assert other.read_bytes() == b"upload in flight on another node"
    assert (live_folder / "out.webm").read_bytes() == b"being written"
