"""A paste filter in front of nova-api for `lab fault api-500` (CONTRACT.md
"Control-plane faults").

While `$VIGIL_LAB_DIR/run/api-500.json` says so (`until_unix` in the
future), nova-api answers 500 the way it does when its database or message
bus fails under it:
- a read (GET/HEAD) gets 500 without reaching Nova;
- a write (POST/PUT/DELETE) reaches Nova first and then gets 500, so the
  call may have been applied while its answer says it failed: the worst
  case a client of Nova must survive (issue 17).
Outside that window it passes everything through untouched. The file is
read at most once a second, so the filter costs nothing measurable.
"""
import json
import os
import time

_FLAG = os.path.join(os.environ.get("VIGIL_LAB_DIR", "/var/lib/vigil-lab"), "run",
                     "api-500.json")
_BODY = json.dumps({"computeFault": {
    "code": 500,
    "message": "Unexpected API Error (vigil lab fault api-500)"}}).encode()


class _Window:
    def __init__(self):
        self.checked = 0.0
        self.until = 0.0

    def active(self):
        now = time.time()
        if now - self.checked >= 1.0:
            self.checked = now
            try:
                with open(_FLAG) as f:
                    self.until = float(json.load(f).get("until_unix", 0))
            except (OSError, ValueError, AttributeError):
                self.until = 0.0
        return now < self.until


def filter_factory(global_conf, **local_conf):
    window = _Window()

    def make(app):
        def middleware(environ, start_response):
            if not window.active():
                return app(environ, start_response)
            if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
                # Let Nova apply it, drop its answer.
                for _ in app(environ, lambda *a, **k: (lambda _b: None)):
                    pass
            start_response("500 Internal Server Error",
                           [("Content-Type", "application/json"),
                            ("Content-Length", str(len(_BODY)))])
            return [_BODY]
        return middleware
    return make
