"""Password-reset mail over real SMTP (an aiosmtpd server), and a mail server that is down."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from control.context import SETTINGS
from tests.conftest import Api, SettingsFactory
from tests.server_process import free_port


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], email.message.EmailMessage]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((list(envelope.rcpt_tos), message))  # type: ignore[arg-type]
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, Inbox]]:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller.port, inbox
    controller.stop()


def mail_settings(port: int) -> dict[str, Any]:
    return {"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_starttls": False, "from_address": "huiyi@example.com"}


async def test_reset_mail_goes_out_over_smtp(
    settings_factory: SettingsFactory, make_api: Callable[..., Any], smtp_server: tuple[int, Inbox]
) -> None:
    port, inbox = smtp_server
    api: Api = await make_api(settings_factory(mail=mail_settings(port)))
    account = await api.account()
    await api.call("POST", "/api/v1/auth/forgot-password", json={"email": account.email}, expect=200)
    await api.settle()

    ((recipients, message),) = inbox.messages
    assert recipients == [account.email] and message["From"] == "huiyi@example.com"
    token = re.search(r"token=([\w-]+)", message.get_content())
    assert token
    await api.call(
        "POST",
        "/api/v1/auth/reset-password",
        json={"token": token.group(1), "new_password": "via-smtp-123"},
        expect=200,
    )
    outbox = api.app[SETTINGS].server.data_dir / "outbox"
    assert not outbox.exists(), "with SMTP configured nothing is written to the outbox"


async def test_mail_server_down_still_answers_the_same(
    settings_factory: SettingsFactory, make_api: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    api: Api = await make_api(settings_factory(mail=mail_settings(free_port())))
    account = await api.account()
    body = await api.call("POST", "/api/v1/auth/forgot-password", json={"email": account.email}, expect=200)
    assert body["code"] == 200
    await api.settle()
    assert "could not send the password reset mail" in caplog.text
