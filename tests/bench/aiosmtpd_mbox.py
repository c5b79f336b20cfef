"""A reference SMTP server for the benchmark: aiosmtpd delivering to one mbox file.

Each message is appended to the mbox (mboxrd quoting, a From_ line, a blank line after it),
under a lock (a process-wide asyncio lock plus flock, as a mail reader expects), and fsynced
before the 250 reply, so it does the same durable work per message as smtplab.

    python aiosmtpd_mbox.py --listen 127.0.0.1:8025 --mbox /tmp/x/mbox

Used by tests/bench/compare.sh.
"""

import argparse
import asyncio
import fcntl
import os
import re
import time

from aiosmtpd.smtp import SMTP

FROM_LINE = re.compile(rb"^>*From ", re.MULTILINE)


class MboxHandler:
    def __init__(self, path):
        self.path = path
        self.lock = asyncio.Lock()

    async def handle_DATA(self, server, session, envelope):
        content = envelope.original_content or envelope.content
        content = content.replace(b"\r\n", b"\n")
        if not content.endswith(b"\n"):
            content += b"\n"
        # mboxrd (RFC 4155 and the mboxrd convention): quote every ^>*From line with one more >.
        content = FROM_LINE.sub(lambda m: b">" + m.group(0), content)
        sender = envelope.mail_from or "MAILER-DAEMON"
        stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime())
        record = f"From {sender} {stamp}\n".encode() + content + b"\n"
        async with self.lock:
            self.append(record)
        return "250 2.0.0 OK"

    def append(self, record):
        with open(self.path, "ab") as mbox:
            fcntl.flock(mbox, fcntl.LOCK_EX)
            try:
                mbox.write(record)
                mbox.flush()
                os.fsync(mbox.fileno())
            finally:
                fcntl.flock(mbox, fcntl.LOCK_UN)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8025")
    parser.add_argument("--mbox", required=True)
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    handler = MboxHandler(args.mbox)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(
        loop.create_server(lambda: SMTP(handler, hostname="aiosmtpd.bench"), host, int(port))
    )
    print(f"aiosmtpd listening on {args.listen}, delivering to {args.mbox}", flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()


if __name__ == "__main__":
    main()
