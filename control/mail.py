"""Outgoing mail: SMTP when configured, else an outbox directory an operator can read."""

from __future__ import annotations

import logging
import secrets
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib

from config.settings import MailSettings
from control.envelope import utc_now
from control.private_files import write_private

log = logging.getLogger("huiyi.mail")


class Mailer:
    def __init__(self, settings: MailSettings, outbox: Path) -> None:
        self._settings = settings
        self.outbox = outbox

    async def send(self, to: str, subject: str, body: str) -> None:
        message = EmailMessage()
        message["From"] = self._settings.from_address
        message["To"] = to
        message["Subject"] = subject
        message.set_content(body)
        if self._settings.smtp_host:
            await aiosmtplib.send(
                message,
                hostname=self._settings.smtp_host,
                port=self._settings.smtp_port,
                username=self._settings.smtp_username or None,
                password=self._settings.smtp_password or None,
                start_tls=self._settings.smtp_starttls,
                timeout=30,
            )
            log.info("mail %r sent to %s via %s", subject, to, self._settings.smtp_host)
            return
        name = f"{utc_now():%Y%m%dT%H%M%S.%f}-{secrets.token_hex(4)}.eml"
        temporary = self.outbox / f".{name}.tmp"
        write_private(temporary, bytes(message))
        temporary.rename(self.outbox / name)
        log.info("mail %r to %s written to %s (no SMTP server configured)", subject, to, self.outbox / name)
