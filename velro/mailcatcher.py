"""A local SMTP catcher for the embedded default: every message becomes a file.

`./scripts/run.sh` starts it when nothing listens on the SMTP port, so a
newcomer sees the emails the worker sends (welcome, referral credited) under
var/mail/ without installing Mailpit. It accepts any sender and recipient and
relays nothing: it is a local development tool, never a mail server.

    python -m velro.mailcatcher --host 127.0.0.1 --port 1025 --dir var/mail
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import signal
import threading
import time
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path

from aiosmtpd.controller import Controller

_SLUG = re.compile(r"[^A-Za-z0-9]+")


class MaildirWriter:
    """aiosmtpd handler: one `.eml` file per message, written atomically."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._sequence = itertools.count(1)
        directory.mkdir(parents=True, exist_ok=True)

    def path_for(self, content: bytes) -> Path:
        subject = message_from_bytes(content, policy=default_policy).get("Subject", "") or "no-subject"
        slug = _SLUG.sub("-", str(subject)).strip("-")[:60] or "no-subject"
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        return self.directory / f"{stamp}-{os.getpid()}-{next(self._sequence):05d}-{slug}.eml"

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode()
        path = self.path_for(content)
        # Readers (a newcomer's `ls var/mail`, the tests) never see half a message.
        partial = path.with_suffix(".part")
        partial.write_bytes(content)
        partial.replace(path)
        return "250 Message accepted for delivery"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1025)
    parser.add_argument("--dir", default="var/mail", type=Path)
    args = parser.parse_args(argv)

    controller = Controller(MaildirWriter(args.dir), hostname=args.host, port=args.port)
    controller.start()
    print(f"mail catcher: SMTP {args.host}:{args.port} -> {args.dir}/*.eml", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
