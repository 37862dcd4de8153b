"""The meeting app in web/ used as people use it, in headless Chromium with fake camera,
microphone and screen: a host signs up, schedules a meeting with a waiting room and passes its
invite link on; a guest (on a phone-sized screen) opens it, signs up, waits and is let in; they see
and hear each other, chat, share a screen; the host mutes and removes the guest; a reload and a cut
network both come back by themselves; ending the meeting ends it for everyone; live noise
suppression switched on one page shows on the other's. Every screen is screenshot into
test-artifacts/webapp/ and checked with axe-core."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import TimeoutError as PlaywrightTimeout

from tests.browser import launch, needs_chromium, open_participant
from tests.server_process import ServerProcess, make_user, request, start_server
from tests.support import image_bytes, until
from tests.webapp import CuttableProxy, check_screen

pytestmark = [needs_chromium, pytest.mark.asyncio(loop_scope="module")]
PASSWORD = "meeting-pass-42"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
# A fake screen to share: Chromium's fake capture UI picks it without asking.
# What a page shows of the active speaker: the server's last word, and each tile's state.
SPEAKER_STATE = """JSON.stringify({
  speaker: window.huiyi.activeSpeaker,
  tiles: [...document.querySelectorAll('#stage .tile')].map(
    (t) => [t.dataset.key, t.className, t.querySelector('.mic-off').hidden]),
})"""
SCREEN_FLAGS = ("--auto-select-desktop-capture-source=Entire screen",)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("webapp")
    env = {"HUIYI_RATE_LIMITS": "off", "HUIYI_SFU_BIND_ADDRESSES": "127.0.0.1", "HUIYI_TURN_ENABLED": "false"}
    process = start_server("--data-dir", str(tmp / "data"), log=tmp / "server.log", env=env)
    yield process
    process.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chromium() -> AsyncIterator[Any]:
    async with launch(*SCREEN_FLAGS) as browser:
        yield browser


@pytest_asyncio.fixture(loop_scope="module")
async def proxy(server: ServerProcess) -> AsyncIterator[CuttableProxy]:
    relay = CuttableProxy(int(server.url.rsplit(":", 1)[1]))
    await relay.start()
    yield relay
    await relay.close()


async def person(browser: Any, name: str, viewport: dict[str, int]) -> Any:
    context = await browser.new_context(viewport=viewport)
    page = await context.new_page()
    page.on("console", lambda entry: entry.type == "error" and print(f"[{name}] {entry.text}"))
    page.on("pageerror", lambda error: print(f"[{name}] page error: {error}"))
    page.on("dialog", lambda dialog: dialog.accept())  # "Remove …?", "End the meeting?"
    return page


async def sign_up(page: Any, username: str, nickname: str) -> None:
    await page.fill("input[name=username]", username)
    await page.fill("input[name=nickname]", nickname)
    await page.fill("input[name=email]", f"{username}@example.com")
    await page.fill("input[name=password]", PASSWORD)
    await page.click("#signup-form button[type=submit]")


async def decoding(page: Any, user_id: int, *, peer_id: str | None = None) -> int:
    """Frames of ``user_id``'s video (sent by ``peer_id``, if given) this page decoded (0: none)."""
    stats = await page.evaluate("window.huiyi.getStats()")
    frames = [
        entry.get("framesDecoded") or 0
        for entry in stats["inbound"]
        if entry["kind"] == "video" and entry.get("user_id") == user_id and peer_id in (None, entry.get("peer_id"))
    ]
    return max(frames, default=0)


async def video_size(page: Any, selector: str) -> tuple[int, int]:
    return tuple(await page.eval_on_selector(selector, "(v) => [v.videoWidth, v.videoHeight]"))


async def test_host_and_guest_meet_through_an_invite_link(
    server: ServerProcess, chromium: Any, proxy: CuttableProxy
) -> None:
    suffix = uuid.uuid4().hex[:6]
    screens: dict[str, list[str]] = {}
    ann = await person(chromium, "ann", DESKTOP)
    ben = await person(chromium, "ben", PHONE)

    # Ann signs up and schedules a meeting with a waiting room.
    await ann.goto(server.url + "/")
    await ann.wait_for_selector("#login-form")
    await check_screen(ann, "01 sign in", screens)
    await ann.click("text=Create an account")
    await ann.wait_for_selector("#signup-form")
    await check_screen(ann, "02 sign up", screens)
    await sign_up(ann, f"ann{suffix}", "Ann Lee")
    await ann.wait_for_selector("text=Hello, Ann Lee")
    await check_screen(ann, "03 home", screens)

    # Her profile: a picture, shown next to her name from then on.
    await ann.click("#nav a.who")
    await ann.wait_for_selector("#avatar-form")
    await ann.set_input_files(
        "#avatar-form input[type=file]", files=[{"name": "me.png", "mimeType": "image/png", "buffer": image_bytes()}]
    )
    await ann.click("#avatar-form button[type=submit]")
    await ann.wait_for_selector("#nav img.avatar[src^='/api/v1/users/avatars/']")
    await check_screen(ann, "03b profile", screens)
    await ann.click("#nav a:has-text('Meetings')")
    await ann.wait_for_selector("text=Hello, Ann Lee")
    await ann.click("#main a:has-text('New meeting')")
    await ann.wait_for_selector("#meeting-form")
    await ann.fill("input[name=title]", "Design review")
    await ann.check("input[name=enable_waiting_room]")
    await check_screen(ann, "04 new meeting", screens)
    await ann.click("#meeting-form button[type=submit]")
    link = await (await ann.wait_for_selector("#invite-link")).input_value()
    assert "meeting=" in link and "code=" in link
    await check_screen(ann, "05 meeting created", screens)

    # Ann goes in: the pre-join screen previews her camera and hears her microphone.
    await ann.click("#join-created")
    await ann.wait_for_selector("#prejoin-form")
    await until(lambda: ann.eval_on_selector("#preview-video", "(v) => v.videoWidth > 0"), "ann's preview", 15)
    await until(lambda: ann.eval_on_selector("#mic-level", "(m) => m.value > 0"), "ann's microphone level", 15)
    await check_screen(ann, "06 pre-join", screens)
    await ann.click("#join-button")
    await ann.evaluate("window.huiyiReady")
    ann_id = await ann.evaluate("window.huiyi.userId")
    meeting_id = await ann.evaluate("window.huiyi.meetingId")
    _, body = request("GET", f"{server.url}/api/v1/meetings/{meeting_id}", token=await token_of(ann))
    assert body["data"]["status"] == "ongoing", "the host's arrival starts a scheduled meeting"

    # Ben opens the link (his connection to the server goes through a relay the test can cut),
    # signs up on the way, and waits to be let in.
    await ben.goto(link.replace(server.url, proxy.url))
    await ben.wait_for_selector("#login-form")
    assert "code=" not in ben.url, "the invite code is taken out of the address"
    await ben.click("text=Create an account")
    await sign_up(ben, f"ben{suffix}", "Ben Okafor")
    await ben.wait_for_selector("#prejoin-form")
    await ben.click("#join-button")
    await ben.wait_for_selector("#waiting-room")
    await check_screen(ben, "07 waiting room (phone)", screens)

    # Ann is told, with a count, and lets him in.
    notice = ann.locator(".notice", has_text="Ben Okafor is waiting to join.")
    await notice.wait_for(timeout=15_000)
    assert await ann.get_attribute("#toggle-people", "aria-label") == "People (1 waiting)"
    await check_screen(ann, "08 someone waiting", screens)
    await notice.locator("button", has_text="Admit").click()
    await ben.evaluate("window.huiyiReady")
    ben_id = await ben.evaluate("window.huiyi.userId")

    # Both see each other, by name, and the grid holds both tiles.
    ben_on_ann = f"#stage [data-key='user:{ben_id}']"
    ann_on_ben = f"#stage [data-key='user:{ann_id}']"
    await ann.wait_for_selector(f"{ben_on_ann} .tile-name:has-text('Ben Okafor')", timeout=15_000)
    await ben.wait_for_selector(f"{ann_on_ben} .tile-name:has-text('Ann Lee')", timeout=15_000)
    await until(lambda: decoding(ann, ben_id), "ann to decode ben's video", 30, interval=0.5)
    await until(lambda: decoding(ben, ann_id), "ben to decode ann's video", 30, interval=0.5)
    await until(
        lambda: ann.eval_on_selector(f"{ben_on_ann} video", "(v) => v.videoWidth > 0"), "ben's tile to play", 15
    )
    assert await ann.locator("#stage .tile").count() == 2
    # The server names the loudest speaker (both fake microphones beep): a tile shows it.
    try:
        await ann.wait_for_selector("#stage .tile.speaking", timeout=20_000)
    except PlaywrightTimeout:
        seen = await ann.evaluate(SPEAKER_STATE)
        raise AssertionError(f"no tile shows a speaker; what ann's page holds: {seen}") from None
    await check_screen(ann, "09 meeting", screens)
    await check_screen(ben, "10 meeting (phone)", screens)
    width = await ben.evaluate("[document.documentElement.scrollWidth, innerWidth]")
    assert width[0] <= width[1], "nothing runs off a phone's screen"
    for control in ("#mute-audio", "#mute-video", "#toggle-chat", "#leave"):
        assert await ben.is_visible(control)

    # Chat: Ben writes; Ann, chat closed, sees an unread count, then the message.
    await ben.click("#toggle-chat")
    await ben.fill("#chat-form input", "Hello from the phone")
    await ben.press("#chat-form input", "Enter")
    await until(lambda: ann.get_attribute("#toggle-chat", "aria-label"), "an unread count", 10)
    await ann.wait_for_selector("#toggle-chat[aria-label='Chat (1 unread)']", timeout=10_000)
    await ann.click("#toggle-chat")
    await ann.wait_for_selector("#chat-log li:has-text('Hello from the phone')")
    await check_screen(ann, "11 chat", screens)
    await ann.click("#toggle-chat")
    await ben.click("#toggle-chat")

    # Ben shares his screen: Ann gets it as a stream of its own, shown large.
    await ben.click("#share-screen")
    screen_on_ann = f"#stage [data-key='screen:{ben_id}']"
    await ann.wait_for_selector(f"{screen_on_ann}.main", timeout=20_000)
    await until(
        lambda: ann.eval_on_selector(f"{screen_on_ann} video", "(v) => v.videoWidth > 0"), "the shared screen", 20
    )
    await check_screen(ann, "12 screen share", screens)
    await ben.click("#share-screen")
    await ann.wait_for_selector(screen_on_ann, state="detached", timeout=15_000)

    # The host mutes Ben: he is told, his button shows it, Ann's view of him shows it.
    await ann.click("#toggle-people")
    await ann.click("button[aria-label='Mute Ben Okafor']")
    await ben.wait_for_selector(".notice:has-text('turned your microphone off')", timeout=10_000)
    await ben.wait_for_selector("#mute-audio[aria-pressed=true]")
    await ann.wait_for_selector(f"{ben_on_ann} .mic-off:not([hidden])", timeout=10_000)
    assert not await ann.locator(f"{ben_on_ann}.speaking").count(), "a muted speaker is not shown speaking"
    await check_screen(ann, "13 people", screens)
    await ann.click("#toggle-people")

    # Ben unmutes himself with the keyboard (M): the server forwards his sound again.
    await ben.keyboard.press("m")
    await ben.wait_for_selector("#mute-audio[aria-pressed=false]")
    await ann.wait_for_selector(f"{ben_on_ann} .mic-off", state="hidden", timeout=10_000)

    # A reload puts Ben straight back in.
    await ben.reload()
    await ben.evaluate("window.huiyiReady")
    reloaded = await ben.evaluate("window.huiyi.sessionId")
    await until(
        lambda: decoding(ann, ben_id, peer_id=reloaded), "ann to decode ben's video after his reload", 30, interval=0.5
    )

    # The browser goes offline and back: Ben sees he is reconnecting, then media flows again.
    await ben.context.set_offline(True)
    await ben.wait_for_selector("#conn-state:has-text('Reconnecting')", timeout=20_000)
    await ben.context.set_offline(False)
    await ben.wait_for_selector("#conn-state", state="hidden", timeout=40_000)
    frames = await decoding(ann, ben_id)
    await until(lambda: more_frames(ann, ben_id, frames), "ben's video to flow again after the network came back", 40)

    # His connection to the server drops and stays away a few seconds: the page says so, then
    # joins again by itself on a new socket and new media connections, and both see each other.
    session = await ben.evaluate("window.huiyi.sessionId")
    proxy.cut(hold=True)
    await ben.wait_for_selector("#conn-state:has-text('Reconnecting')", timeout=20_000)
    await check_screen(ben, "14 reconnecting (phone)", screens)
    proxy.resume()
    await ben.wait_for_selector("#conn-state", state="hidden", timeout=40_000)
    new_session = await ben.evaluate("window.huiyi.sessionId")
    assert new_session != session
    await until(lambda: decoding(ann, ben_id, peer_id=new_session), "ann to decode ben's video after he came back", 40)
    await until(lambda: decoding(ben, ann_id), "ben to decode ann's video after he came back", 40)
    assert await ann.locator(f"{ben_on_ann}").count() == 1, "he never left the room"

    # Ann makes Ben a moderator; he is told. She unlocks the meeting (no more waiting room).
    await ann.click("#toggle-people")
    await ann.select_option("select[aria-label='Role of Ben Okafor']", "moderator")
    await ben.wait_for_selector(".notice:has-text('You are now the moderator.')", timeout=20_000)
    await ann.click("#toggle-people")
    await ann.click("#more")
    await ann.click("#menu-lock:has-text('Unlock meeting')")
    await ann.wait_for_selector(".notice:has-text('Meeting unlocked.')")
    _, body = request("GET", f"{server.url}/api/v1/meetings/{meeting_id}", token=await token_of(ann))
    assert body["data"]["settings"]["enable_waiting_room"] is False

    # Ann records for a moment: everyone sees it.
    await ann.click("#more")
    await ann.click("#menu-record:has-text('Start recording')")
    await ben.wait_for_selector("#recording:has-text('● Recording')", timeout=15_000)
    await ann.click("#more")
    await ann.click("#menu-record:has-text('Stop recording')")
    await ben.wait_for_selector("#recording", state="hidden", timeout=15_000)

    # Ann removes Ben: he is told, and his tile goes.
    await ann.click("#toggle-people")
    await ann.click("button[aria-label='Remove Ben Okafor']")
    await ben.wait_for_selector("text=You were removed from the meeting", timeout=15_000)
    await check_screen(ben, "15 removed (phone)", screens)
    await ann.wait_for_selector(ben_on_ann, state="detached", timeout=15_000)

    # Ann ends the meeting for everyone: it says "ended" and has its end time.
    await ann.click("#more")
    await ann.click("#menu-end")
    await ann.wait_for_selector("text=The meeting has ended", timeout=15_000)
    await check_screen(ann, "16 ended", screens)
    _, body = request("GET", f"{server.url}/api/v1/meetings/{meeting_id}", token=await token_of(ann))
    assert body["data"]["status"] == "ended" and body["data"]["end_time"] is not None
    assert await ann.evaluate("sessionStorage.getItem('huiyi.active')") is None, "leaving forgets the meeting"

    problems = {screen: found for screen, found in screens.items() if found}
    assert not problems, problems


async def more_frames(page: Any, user_id: int, frames: int) -> bool:
    return await decoding(page, user_id) > frames + 30


async def token_of(page: Any) -> str:
    return await page.evaluate("JSON.parse(sessionStorage.getItem('huiyi.session')).access_token")


async def test_a_meeting_password_is_asked_only_when_needed(server: ServerProcess, chromium: Any) -> None:
    suffix = uuid.uuid4().hex[:6]
    host_token, _ = make_user(server.url, f"hana{suffix}")
    status, body = request(
        "POST", f"{server.url}/api/v1/meetings", {"title": "Board", "password": "open-sesame"}, host_token
    )
    assert status == 201, body
    meeting_id = body["data"]["meeting_id"]
    make_user(server.url, f"cleo{suffix}", PASSWORD)
    screens: dict[str, list[str]] = {}
    cleo = await person(chromium, "cleo", DESKTOP)
    # Cleo has only the meeting's address, not its invite link: she signs in and is sent on to it.
    await cleo.goto(f"{server.url}/#/m/{meeting_id}")
    await cleo.wait_for_selector("#login-form")
    await cleo.fill("input[name=username]", f"cleo{suffix}")
    await cleo.fill("input[name=password]", PASSWORD)
    await cleo.click("#login-form button[type=submit]")
    await cleo.wait_for_selector("#prejoin-form")
    assert not await cleo.is_visible("input[name=password]"), "no password asked before the server wants one"
    await cleo.click("#join-button")
    await cleo.wait_for_selector("text=This meeting asks for a password")
    await cleo.fill("#prejoin-form input[name=password]", "wrong-guess")
    await cleo.click("#join-button")
    await cleo.wait_for_selector("text=That password is not right.")
    await check_screen(cleo, "17 meeting password", screens)
    await cleo.fill("#prejoin-form input[name=password]", "open-sesame")
    await cleo.click("#join-button")
    await cleo.evaluate("window.huiyiReady")
    await cleo.wait_for_selector("#stage .tile.local")
    # Inside, she leaves; the page says so and offers to join again.
    await cleo.click("#leave")
    await cleo.wait_for_selector("text=You left the meeting")
    await check_screen(cleo, "18 left", screens)
    problems = {screen: found for screen, found in screens.items() if found}
    assert not problems, problems
    await cleo.context.close()


async def test_noise_suppression_switched_on_one_page_shows_on_the_others(server: ServerProcess, chromium: Any) -> None:
    suffix = uuid.uuid4().hex[:6]
    host_token, host_id = make_user(server.url, f"nora{suffix}")
    guest_token, guest_id = make_user(server.url, f"gus{suffix}")
    status, body = request("POST", f"{server.url}/api/v1/meetings", {"title": "Quiet please"}, host_token)
    assert status == 201, body
    meeting_id, code = body["data"]["meeting_id"], body["data"]["invite_code"]
    for token, payload in ((host_token, {}), (guest_token, {"invite_code": code})):
        status, body = request("POST", f"{server.url}/api/v1/meetings/{meeting_id}/join", payload, token)
        assert status == 200, body
    nora = await open_participant(chromium, server, meeting_id, host_token, host_id)
    gus = await open_participant(chromium, server, meeting_id, guest_token, guest_id)
    gus_on_nora = f"#stage [data-key='user:{guest_id}'] .badge.noise"
    nora_on_gus = f"#stage [data-key='user:{host_id}'] .badge.noise"
    await nora.wait_for_selector(gus_on_nora, state="hidden", timeout=15_000)

    # Gus cleans his own microphone: Nora's page shows it on his tile, his toggle says it is on.
    await gus.click("#noise-suppression")
    await nora.wait_for_selector(gus_on_nora, state="visible", timeout=10_000)
    await gus.wait_for_selector("#noise-suppression[aria-pressed=true]")
    await nora.wait_for_selector(".notice:has-text('Noise suppression is on for')")
    assert await nora.is_hidden("#local-tile .badge.noise")

    # Nora switches it on for everyone, then off: Gus sees it on her tile, then nowhere.
    await nora.click("#more")
    await nora.click("#menu-noise:has-text('Noise suppression for everyone')")
    await gus.wait_for_selector(nora_on_gus, state="visible", timeout=10_000)
    await gus.wait_for_selector("#noise-suppression[aria-pressed=true][disabled]")
    await nora.click("#more")
    await nora.click("#menu-noise:has-text('Noise suppression off for everyone')")
    await gus.wait_for_selector(nora_on_gus, state="hidden", timeout=10_000)
    await gus.wait_for_selector("#noise-suppression[aria-pressed=false]:not([disabled])")
    await nora.wait_for_selector(gus_on_nora, state="hidden")
    for page in (nora, gus):
        await page.context.close()
