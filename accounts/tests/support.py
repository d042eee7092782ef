"""Helpers the account tests share (one copy, not one per file)."""

from __future__ import annotations

import re
import time
from email.message import Message

from rest_framework.test import APIClient

from accounts.tests.factories import DEFAULT_PASSWORD

LOGIN = "/api/v1/auth/login"


def bearer(access_token: str) -> APIClient:
    """An APIClient sending `Authorization: Bearer <access_token>`."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token}")
    return client


def api_login(email: str, password: str = DEFAULT_PASSWORD) -> dict:
    """POST /login through the API; the token body (asserts it succeeded)."""
    response = APIClient().post(LOGIN, {"email": email, "password": password}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


class Clock:
    """A hand-driven clock (monotonic seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- one-time codes and links, read from the emails the real SMTP listener received -------

_CODE = re.compile(r"Your code: (\d{6,10})")
_LINK = re.compile(r"(https?://\S+/auth/v1/verify\?\S+)")


def _text(message: Message) -> str:
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            return part.get_payload(decode=True).decode()
    return ""


def mail_to(smtp_server, address: str, *, count: int = 1, timeout: float = 15.0) -> Message:
    """The `count`-th email with a one-time code to `address` (waits for it, bounded;
    other emails, a welcome, are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        messages = [message for message in smtp_server.to(address) if _CODE.search(_text(message))]
        if len(messages) >= count:
            return messages[count - 1]
        if time.monotonic() >= deadline:
            raise AssertionError(f"no email #{count} to {address} within {timeout} s: {len(messages)} received")
        time.sleep(0.02)


def code_in(message: Message) -> str:
    match = _CODE.search(_text(message))
    assert match, _text(message)
    return match.group(1)


def link_in(message: Message) -> str:
    match = _LINK.search(_text(message))
    assert match, _text(message)
    return match.group(1)


def last_code_to(smtp_server, address: str, *, count: int = 1) -> str:
    """The code in the `count`-th email to `address`."""
    return code_in(mail_to(smtp_server, address, count=count))


def last_link_to(smtp_server, address: str, *, count: int = 1) -> str:
    """The link in the `count`-th email to `address`."""
    return link_in(mail_to(smtp_server, address, count=count))
