"""A byte-level SMTP client: the test decides what goes on the socket and when, so it can stop
half-way through DATA or trickle bytes past a timeout; or, without a socket, be any peer."""

from __future__ import annotations

import asyncio
import socket
from typing import Any


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


class PeerTransport(asyncio.Transport):
    """A transport reporting any peer address, so a test can drive an aiosmtpd protocol as a
    client this machine cannot be over TCP (one off this host, say). Writes are collected."""

    def __init__(self, peer: object) -> None:
        super().__init__()
        self.peer = peer
        self.written = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def converse(protocol: asyncio.Protocol, peer: object, sends: list[bytes]) -> list[str]:
    """The greeting, then the complete reply to each send (a command, or a whole DATA body)."""
    transport = PeerTransport(peer)
    protocol.connection_made(transport)
    answers = [await _next_reply(transport, 0)]
    try:
        for send in sends:
            start = len(transport.written)
            protocol.data_received(send + b"\r\n")
            answers.append(await _next_reply(transport, start))
    finally:
        protocol.connection_lost(None)
    return answers


async def _next_reply(transport: PeerTransport, start: int) -> str:
    for _ in range(1000):
        text = transport.written[start:].decode()
        lines = text.split("\r\n")
        if text.endswith("\r\n") and lines[-2][3:4] == " ":
            return text.removesuffix("\r\n")
        await asyncio.sleep(0.01)
    raise TimeoutError(f"no complete reply after {bytes(transport.written[start:])!r}")
