"""A real HTTP endpoint for the webhook tests: `http.server` in a thread on a free port.

It records every POST (headers and body) and answers from a script of status codes, then with
`default`. `Post.signed()` checks the X-Mailbridge-Signature against the receiver's secret;
`webhook_toml()` writes the config that posts here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Post:
    headers: dict[str, str]  # names in lower case
    body: bytes
    secret: str

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)

    def signed(self) -> bool:
        expected = "sha256=" + hmac.new(self.secret.encode(), self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(self.headers.get("x-mailbridge-signature", ""), expected)


class Receiver:
    """Answers each POST with the next scripted status (then `default`); `with` runs it."""

    def __init__(self, secret: str, script: list[int] | None = None, default: int = 204) -> None:
        self.secret = secret
        self.script = list(script or [])
        self.default = default
        self.posts: list[Post] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.lock:
                    receiver.posts.append(Post(headers, body, receiver.secret))
                    status = receiver.script.pop(0) if receiver.script else receiver.default
                text = b"bad payload" if status == 400 else b""
                self.send_response(status)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hook"

    def webhook_toml(self, events: str = '["created", "status"]') -> str:
        """A `[[webhooks]]` table posting `events` (a TOML list) here, its secret in
        $MB_HOOK_SECRET."""
        return (
            "[[webhooks]]\n"
            'name = "crm"\n'
            f'url = "{self.url}"\n'
            f"events = {events}\n"
            'secret_env = "MB_HOOK_SECRET"\n'
            'timeout = "5s"\n'
        )

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
