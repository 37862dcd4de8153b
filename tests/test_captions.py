"""Live captions end to end: a real aiortc participant speaks espeak-ng sentences into a meeting
through the SFU; the server decodes and transcribes them in its caption worker process (the
packaged Moonshine and Silero) and every other participant's socket gets ``caption`` messages; the
transcript keeps them. One app per module, each sentence spoken once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from config import load_settings
from control.app import create_app
from control.context import CAPTIONS
from tests.ai_support import microphone_samples, speak, speech_end, wer
from tests.browser import launch, needs_chromium
from tests.conftest import Account, Api
from tests.rtc_clients import Participant, SpeechAudioTrack
from tests.support import until

pytestmark = [pytest.mark.asyncio(loop_scope="module")]
MEETINGS = "/api/v1/meetings"
SENTENCES = {
    "first": "please schedule the quarterly budget review for next thursday afternoon",
    "unheard": "the printer on the third floor is out of paper",
    "second": "we need to finish the report before friday",
    "third": "thank you all for joining the call today",
}
CAPTION_WAIT = 30.0  # seconds from the end of a sentence to its caption, at worst, on a loaded machine
WORST_WER = 0.2


@dataclass
class Meeting:
    api: Api
    url: str
    meeting_id: int
    host: Account
    speaker: Account
    listener: Account
    outsider: Account
    admin: Account
    clips: dict[str, np.ndarray]
    people: dict[str, Participant] = field(default_factory=dict)
    microphone: SpeechAudioTrack = field(default_factory=SpeechAudioTrack)

    async def switch(self, account: Account, **body: Any) -> dict[str, Any]:
        return await self.api.call("POST", f"{MEETINGS}/{self.meeting_id}/captions", token=account.access, json=body)

    async def connect(self, name: str, account: Account) -> Participant:
        person = Participant(self.url, account.access, account.id, self.meeting_id)
        self.people[name] = person
        await person.connect()
        return person

    async def say(self, key: str) -> float:
        """Speak a sentence; when (wall clock) its last sound was sent."""
        began, _ = await self.microphone.say(self.clips[key])
        return began + speech_end(self.clips[key])


def captions_of(person: Participant, final: bool = True) -> list[dict[str, Any]]:
    return [m["data"] for m in person.messages if m["type"] == "caption" and m["data"]["final"] == final]


def caption_states(person: Participant) -> list[bool]:
    return [m["data"]["captions"] for m in person.messages if m["type"] == "media-state" and "captions" in m["data"]]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def meeting(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Meeting]:
    work = tmp_path_factory.mktemp("captions")
    clips = {key: microphone_samples(speak(text, work / f"{key}.wav")) for key, text in SENTENCES.items()}
    settings = load_settings(
        None,
        {
            "server": {"data_dir": str(work / "data")},
            "rate_limits": {"enabled": False},
            "turn": {"enabled": False},
            "sfu": {"bind_addresses": ["127.0.0.1"], "ipv6": False, "workers": 0},
        },
        environ={},
    )
    client = TestClient(TestServer(create_app(settings), host="127.0.0.1"))
    await client.start_server()
    api = Api(client)
    host, speaker, listener, outsider = [await api.stored_account() for _ in range(4)]
    admin = await api.stored_account(role="admin")
    created = await api.call("POST", MEETINGS, token=host.access, json={"title": "captions"}, expect=201)
    meeting_id = created["data"]["meeting_id"]
    code = created["data"]["invite_code"]
    await api.call("POST", f"{MEETINGS}/{meeting_id}/join", token=host.access, json={}, expect=200)
    url = str(client.make_url("")).rstrip("/")
    world = Meeting(api, url, meeting_id, host, speaker, listener, outsider, admin, clips)
    try:
        for account in (speaker, listener):
            await api.call("POST", f"{MEETINGS}/{meeting_id}/join", token=account.access, json={"invite_code": code})
        yield world
    finally:
        await asyncio.gather(*(person.close() for person in world.people.values()), return_exceptions=True)
        await client.close()


async def test_only_the_host_or_a_moderator_switches_captions(meeting: Meeting) -> None:
    for account in (meeting.listener, meeting.outsider):
        refused = await meeting.switch(account, enabled=True)
        assert refused["status"] == 403, refused
    unknown = await meeting.switch(meeting.host, enabled=True, language="xh")
    assert unknown["status"] == 503 and unknown["code"] == 4001, unknown
    assert "Whisper" in unknown["message"] and "model_dir" in unknown["message"]
    transcript = f"{MEETINGS}/{meeting.meeting_id}/transcript"
    await meeting.api.call("GET", transcript, token=meeting.outsider.access, expect=403)
    empty = await meeting.api.call("GET", transcript, token=meeting.listener.access, expect=200)
    assert empty["data"] == {"meeting_id": meeting.meeting_id, "lines": [], "next_after": None}
    assert meeting.api.app[CAPTIONS].worker.pid is None, "no worker while nothing is captioned"


async def test_what_a_participant_says_reaches_the_room_as_captions_and_the_transcript(meeting: Meeting) -> None:
    listener = await meeting.connect("listener", meeting.listener)
    speaker = await meeting.connect("speaker", meeting.speaker)
    on = await meeting.switch(meeting.host, enabled=True, language="en-US")
    assert on["status"] == 200, on
    assert on["data"]["enabled"] and on["data"]["model_id"] == "moonshine-tiny-en"
    await until(lambda: caption_states(listener) == [True], "the room to hear captions are on")
    await speaker.publish(video=None, audio=meeting.microphone)
    worker = meeting.api.app[CAPTIONS].worker
    await until(lambda: worker.streams == 1, "the speaker's audio to be captioned", 10)

    ended = await meeting.say("first")
    [caption] = await until(lambda: captions_of(listener), "the first sentence's caption", CAPTION_WAIT)
    latency = time.time() - ended  # an upper bound: the caption was there by now
    assert wer(SENTENCES["first"], caption["text"]) <= WORST_WER, caption["text"]
    assert caption["user_id"] == meeting.speaker.id and caption["username"] == meeting.speaker.username
    assert caption["language"] == "en-US" and caption["model_id"] == "moonshine-tiny-en"
    assert caption["peer_id"] == speaker.peer_id and isinstance(caption["caption_id"], int)
    assert caption["started_at"] < caption["ended_at"]
    print(f"caption {latency:.2f} s after the end of speech: {caption['text']!r}")
    for partial in captions_of(listener, final=False):
        assert partial["utterance_id"] == caption["utterance_id"] and partial["caption_id"] is None
    assert captions_of(speaker) == [caption], "the speaker sees their own captions too"

    transcript = await meeting.api.call(
        "GET", f"{MEETINGS}/{meeting.meeting_id}/transcript", token=meeting.listener.access, expect=200
    )
    [line] = transcript["data"]["lines"]
    assert line["line_id"] == caption["caption_id"] and line["text"] == caption["text"]
    assert line["user_id"] == meeting.speaker.id and line["started_at"] == caption["started_at"]
    vtt = await meeting.api.client.get(
        f"{MEETINGS}/{meeting.meeting_id}/transcript.vtt", headers={"Authorization": f"Bearer {meeting.host.access}"}
    )
    assert vtt.status == 200 and vtt.headers["Content-Type"].startswith("text/vtt")
    body = await vtt.text()
    assert body.startswith("WEBVTT\n") and f"<v {meeting.speaker.username}>{caption['text']}" in body


async def test_switched_off_nothing_is_captioned_and_the_worker_is_freed(meeting: Meeting) -> None:
    listener, speaker = meeting.people["listener"], meeting.people["speaker"]
    captioner = meeting.api.app[CAPTIONS]
    pid = captioner.worker.pid
    assert pid is not None
    off = await meeting.switch(meeting.host, enabled=False)
    assert off["status"] == 200 and not off["data"]["enabled"], off
    await until(lambda: caption_states(listener) == [True, False], "the room to hear captions are off")
    await until(lambda: captioner.worker.pid is None, "the caption worker to stop")
    await until(lambda: not Path(f"/proc/{pid}").exists(), "its process to be gone")

    await meeting.say("unheard")
    # Someone who leaves, and someone whose account is banned, hear nothing after.
    leaver = await meeting.connect("leaver", await _joined(meeting))
    await leaver.send("leave", {})
    banned_account = await _joined(meeting)
    banned = await meeting.connect("banned", banned_account)
    await meeting.api.call("POST", f"/api/v1/admin/users/{banned_account.id}/ban", token=meeting.admin.access)
    await until(lambda: leaver.socket.closed and banned.socket.closed, "their sockets to close")

    on = await meeting.switch(meeting.host, enabled=True)  # language en by default
    assert on["status"] == 200, on
    await until(lambda: captioner.worker.streams == 1, "the speaker's audio to be captioned again", 10)
    await meeting.say("second")
    await until(lambda: len(captions_of(listener)) == 2, "the second sentence's caption", CAPTION_WAIT)
    second = captions_of(listener)[1]
    assert wer(SENTENCES["second"], second["text"]) <= WORST_WER, second["text"]
    heard = " ".join(caption["text"] for caption in captions_of(listener) + captions_of(listener, final=False))
    assert "printer" not in heard.lower() and "paper" not in heard.lower(), heard
    assert captions_of(speaker)[-1]["caption_id"] == second["caption_id"]
    for gone in (leaver, banned):
        assert not any(m["type"] == "caption" for m in gone.messages), "captions after leaving or a ban"
    lines = await meeting.api.call(
        "GET", f"{MEETINGS}/{meeting.meeting_id}/transcript", token=meeting.host.access, params={"limit": 1}
    )
    assert [line["text"] for line in lines["data"]["lines"]] == [captions_of(listener)[0]["text"]]
    after = lines["data"]["next_after"]
    rest = await meeting.api.call(
        "GET", f"{MEETINGS}/{meeting.meeting_id}/transcript", token=meeting.host.access, params={"after": after}
    )
    assert [line["text"] for line in rest["data"]["lines"]] == [second["text"]]


@needs_chromium
async def test_the_web_page_shows_each_speakers_captions_and_switches_them(meeting: Meeting) -> None:
    listener = meeting.people["listener"]
    query = f"token={meeting.host.access}&user_id={meeting.host.id}&meeting_id={meeting.meeting_id}"
    async with launch() as browser:
        page = await (await browser.new_context()).new_page()
        await page.goto(f"{meeting.url}/?{query}&autostart=1&audio=0&video=0")
        await page.evaluate("window.huiyiReady")
        toggle, captions = page.locator("#captions-toggle"), page.locator("#captions")
        await until(toggle.is_visible, "the host's captions switch")
        await until(captions.is_visible, "the captions area, as they are on")
        assert await toggle.get_attribute("aria-pressed") == "true"

        await meeting.say("third")
        line = captions.locator(f"li[data-user-id='{meeting.speaker.id}']")
        await until(lambda: len(captions_of(listener)) == 3, "the third sentence's caption", CAPTION_WAIT)
        await until(lambda: _text(line, captions_of(listener)[2]["text"]), "the page to show the speaker's line", 10)
        assert (await line.locator("b").inner_text()) == f"{meeting.speaker.username}:"

        await toggle.click()  # off, through the page's own REST call
        await until(lambda: caption_states(listener)[-1] is False, "the room to hear captions are off")
        await until(lambda: _hidden(captions), "the page to hide the captions")
        await toggle.click()  # and on again
        await until(lambda: caption_states(listener)[-1] is True, "the room to hear captions are on again")
        await until(captions.is_visible, "the page to show the captions again")
        assert await toggle.get_attribute("aria-pressed") == "true"


async def _text(line: Any, text: str) -> bool:
    return await line.count() == 1 and (await line.locator("span").inner_text()) == text


async def _hidden(locator: Any) -> bool:
    return not await locator.is_visible()


async def test_ending_the_meeting_stops_captions(meeting: Meeting) -> None:
    captioner = meeting.api.app[CAPTIONS]
    await until(lambda: captioner.worker.streams == 1, "the speaker's audio to be captioned")
    await meeting.api.call("POST", f"{MEETINGS}/{meeting.meeting_id}/start", token=meeting.host.access)
    await meeting.api.call("POST", f"{MEETINGS}/{meeting.meeting_id}/end", token=meeting.host.access, expect=200)
    await until(lambda: captioner.worker.pid is None and not captioner.feeds, "the captions to stop")
    again = await meeting.switch(meeting.host, enabled=True)
    assert again["status"] == 400 and again["code"] == 2002, again
    transcript = await meeting.api.call(
        "GET", f"{MEETINGS}/{meeting.meeting_id}/transcript", token=meeting.speaker.access, expect=200
    )
    assert len(transcript["data"]["lines"]) >= 2, "the transcript stays with the meeting"


async def _joined(meeting: Meeting) -> Account:
    """A new participant of the meeting, added by its host."""
    account = await meeting.api.stored_account()
    await meeting.api.call(
        "POST", f"{MEETINGS}/{meeting.meeting_id}/participants", token=meeting.host.access, json={"user_id": account.id}
    )
    await meeting.api.call("POST", f"{MEETINGS}/{meeting.meeting_id}/join", token=account.access, json={}, expect=200)
    return account
