"""Debian's Firefox ESR driven over WebDriver BiDi, the W3C protocol its built-in remote agent
speaks (``--remote-debugging-port``): no geckodriver and no Playwright build of Firefox, neither
of which can be installed here. Just what a join-and-see test needs: open a page, evaluate script
(awaiting promises), close. Fake camera and microphone come from the profile's preferences."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

from tests.server_process import client_session, free_port

FIREFOX = shutil.which("firefox-esr") or shutil.which("firefox")
PREFERENCES = {
    # A fake camera (a moving pattern) and microphone (a tone), granted without asking.
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    # The media server of the tests listens on loopback only, which Firefox skips unless told.
    "media.peerconnection.ice.loopback": True,
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    # Nothing of the browser's own goes out to the network.
    "app.update.enabled": False,
    "browser.shell.checkDefaultBrowser": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.enabled": False,
    "network.captive-portal-service.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
}
START_TIMEOUT = 60.0


class BidiError(RuntimeError):
    pass


class Firefox:
    """One headless Firefox and one BiDi session on its first tab."""

    def __init__(self) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="huiyi-firefox-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.http: aiohttp.ClientSession | None = None
        self.socket: aiohttp.ClientWebSocketResponse | None = None
        self.context = ""
        self._ids = itertools.count(1)

    async def __aenter__(self) -> Firefox:
        assert FIREFOX is not None, "Firefox is not installed"
        (self.profile / "user.js").write_text(
            "".join(f"user_pref({json.dumps(key)}, {json.dumps(value)});\n" for key, value in PREFERENCES.items())
        )
        port = free_port()
        self.process = subprocess.Popen(
            [FIREFOX, "--headless", "--no-remote", "--profile", str(self.profile), f"--remote-debugging-port={port}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.http = client_session()
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT
        while True:
            try:
                self.socket = await self.http.ws_connect(f"ws://127.0.0.1:{port}/session", max_msg_size=0)
                break
            except aiohttp.ClientError:
                if asyncio.get_running_loop().time() > deadline or self.process.poll() is not None:
                    await self.__aexit__(None, None, None)
                    raise RuntimeError("Firefox's remote agent did not come up") from None
                await asyncio.sleep(0.3)
        await self.command("session.new", {"capabilities": {"alwaysMatch": {"acceptInsecureCerts": True}}})
        tree = await self.command("browsingContext.getTree", {})
        self.context = tree["contexts"][0]["context"]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.socket is not None and not self.socket.closed:
            with contextlib.suppress(TimeoutError, BidiError, aiohttp.ClientError, ConnectionError):
                await asyncio.wait_for(self.command("browser.close", {}), 10)
            await self.socket.close()
        if self.http is not None:
            await self.http.close()
        if self.process is not None:
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    async def command(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Send one command and wait for its answer; events arriving meanwhile are skipped."""
        assert self.socket is not None
        ident = next(self._ids)
        await self.socket.send_json({"id": ident, "method": method, "params": params})
        while True:
            message = await self.socket.receive_json()
            if message.get("id") != ident:
                continue
            if message.get("type") == "error":
                raise BidiError(f"{method}: {message.get('error')}: {message.get('message')}")
            return message["result"]

    async def goto(self, url: str) -> None:
        await self.command("browsingContext.navigate", {"context": self.context, "url": url, "wait": "complete"})

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of an expression (a promise is awaited); a thrown error raises BidiError."""
        result = await self.command(
            "script.evaluate",
            {
                "expression": f"(async () => JSON.stringify(await ({expression})))()",
                "target": {"context": self.context},
                "awaitPromise": True,
            },
        )
        if result.get("type") == "exception":
            details = result.get("exceptionDetails", {})
            raise BidiError(f"{expression}: {details.get('text')}")
        value = result["result"]
        return json.loads(value["value"]) if value.get("type") == "string" else None
