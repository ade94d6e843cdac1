"""The lab's notification receivers: what Vigil sends to people lands here.

    <lab venv>/bin/python receivers.py STATE_RECEIVERS_DIR

- SMTP (aiosmtpd) on 198.51.100.1:2525, one JSON line per message in
  smtp.jsonl: {ts, peer, mail_from, rcpt_tos, subject, from, to, data}.
- Webhook receiver (HTTP) on 198.51.100.1:8099, one JSON line per request in
  webhook.jsonl: {ts, method, path, query, headers: [[name, value], ...],
  body (text), body_b64 (the exact bytes, so a test can verify an HMAC
  signature over them)}. It answers 200 {"ok": true}; a request to
  /status/NNN is answered with status NNN, so tests can make deliveries fail.
  GET /healthz answers 200 without being recorded.
"""

import base64
import email
import email.policy
import http.server
import json
import os
import sys
import threading
import time
from pathlib import Path

from aiosmtpd.controller import Controller

HOST = "198.51.100.1"
SMTP_PORT = 2525
WEBHOOK_PORT = 8099


class Recorder:
    def __init__(self, path):
        self.path = Path(path)
        self.lock = threading.Lock()

    def write(self, rec):
        line = json.dumps(rec, sort_keys=True) + "\n"
        with self.lock, open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


class SmtpHandler:
    def __init__(self, recorder):
        self.recorder = recorder

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        self.recorder.write({
            "ts": time.time(),
            "peer": list(session.peer) if session.peer else None,
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "subject": str(msg.get("Subject", "")),
            "from": str(msg.get("From", "")),
            "to": str(msg.get("To", "")),
            "data": raw.decode("utf-8", errors="replace"),
        })
        return "250 Message accepted for delivery"


def webhook_handler(recorder):
    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "vigil-lab-webhook/1"

        def log_message(self, fmt, *args):
            sys.stderr.write("webhook %s %s\n" % (self.address_string(), fmt % args))

        def _answer(self, status, obj):
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _record(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length > 0 else b""
            path, _, query = self.path.partition("?")
            recorder.write({
                "ts": time.time(),
                "peer": list(self.client_address),
                "method": self.command,
                "path": path,
                "query": query,
                "headers": [[k, v] for k, v in self.headers.items()],
                "body": body.decode("utf-8", errors="replace"),
                "body_b64": base64.b64encode(body).decode(),
            })
            status = 200
            if path.startswith("/status/"):
                try:
                    status = int(path.split("/")[2])
                except ValueError:
                    status = 400
            self._answer(status, {"ok": 200 <= status < 300})

        def do_GET(self):
            if self.path == "/healthz":
                self._answer(200, {"ok": True})
            else:
                self._record()

        do_POST = do_PUT = do_PATCH = do_DELETE = _record

    return Handler


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    smtp = Controller(SmtpHandler(Recorder(out / "smtp.jsonl")), hostname=HOST, port=SMTP_PORT,
                      ready_timeout=10)
    smtp.start()
    httpd = http.server.ThreadingHTTPServer((HOST, WEBHOOK_PORT),
                                            webhook_handler(Recorder(out / "webhook.jsonl")))
    sys.stderr.write(f"receivers: smtp {HOST}:{SMTP_PORT}, webhook http://{HOST}:{WEBHOOK_PORT}/ "
                     f"-> {out}\n")
    sys.stderr.flush()
    try:
        httpd.serve_forever()
    finally:
        smtp.stop()


if __name__ == "__main__":
    main()
