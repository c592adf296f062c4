"""A byte-level SMTP client: the test decides what goes on the socket and when, so it can stop
half-way through DATA or trickle bytes past a timeout."""

from __future__ import annotations

import socket


class RawClient:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")

    def reply(self) -> bytes:
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("connection closed by the server")
            lines.append(line)
            if line[3:4] != b"-":
                return b"".join(lines)

    def command(self, line: str) -> bytes:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()
