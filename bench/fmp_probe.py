"""fast-mail-parser on hostile input, and what it does not give mailbridge.

    python bench/fmp_probe.py [--timeout 60]

Part 1 runs each hostile input through `mailbridge.parse`, `fast_mail_parser.parse_email`
and the hybrid of bench/fmp_hybrid.py, each in its own subprocess with a timeout, so a
crash (a signal), a hang or a memory blow-up in the Rust extension is recorded, not fatal.
Part 2 feeds small crafted mails to both and prints what each makes of the headers
mailbridge relies on (raw classification headers, encoded-words in addresses, 8-bit
headers, the mbox From_ line, defects).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.fmp_hybrid import fmp  # noqa: E402
from bench.zammad_agreement import corpus_dir  # noqa: E402

# ------------------------------------------------------------------- hostile inputs

HEAD = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hostile\r\nMessage-ID: <h@x>\r\n"


def nested_multipart(depth: int) -> bytes:
    opens = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%dx"\r\n\r\n--b%dx\r\n' % (i, i)
        for i in range(depth)
    )
    closes = b"".join(b"\r\n--b%dx--\r\n" % i for i in reversed(range(depth)))
    return HEAD + opens + b"Content-Type: text/plain\r\n\r\nleaf" + closes


def nested_rfc822(depth: int) -> bytes:
    inner = b"Subject: inner\r\nContent-Type: message/rfc822\r\n\r\n" * depth
    return HEAD + b"Content-Type: message/rfc822\r\n\r\n" + inner + b"\r\nleaf\r\n"


def encoded_word_bomb(words: int) -> bytes:
    bomb = b" ".join([b"=?utf-8?q?=C3=A4?="] * words)
    return (
        b"From: =?utf-8?b?" + b"QQ==?= =?utf-8?b?" * (words // 10) + b"QQ==?= <a@example.com>\r\n"
        b"To: b@example.com\r\nSubject: " + bomb + b"\r\n\r\nbody\r\n"
    )


def unclosed_words(count: int) -> bytes:
    return HEAD.replace(b"Subject: hostile", b"Subject: " + b"=?a?q? " * count) + b"\r\nbody\r\n"


def truncated(fraction: float) -> bytes:
    biggest = max((corpus_dir() / "zammad").glob("*.eml"), key=lambda p: p.stat().st_size)
    raw = biggest.read_bytes()
    return raw[: int(len(raw) * fraction)]


def nul_bytes() -> bytes:
    return (
        b"From: Eve\x00 <eve@example.com>\r\nTo: b@exa\x00mple.com\r\nSub\x00ject: n\x00ul\r\n"
        b'Subject: nul\x00\x00 subject\r\nContent-Type: multipart/mixed; boundary="x\x00y"\r\n\r\n'
        b"--x\x00y\r\nContent-Type: text/plain\r\n\r\nbody\x00text\r\n"
        b'--x\x00y\r\nContent-Type: application/pdf; name="a\x00.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBE\x00Ri0x\r\n--x\x00y--\r\n"
    )


def garbage_headers(lines: int) -> bytes:
    rng = random.Random(7)
    junk = b"".join(
        bytes(rng.randrange(0x80, 0x100) for _ in range(rng.randrange(5, 40)))
        + b": "
        + bytes(rng.randrange(0x21, 0x100) for _ in range(rng.randrange(5, 200)))
        + b"\r\n"
        for _ in range(lines)
    )
    return HEAD + junk + b"Subject: \xff\xfe\xc3(\xe9t\xe9\r\n\r\nbody \xff\xfe\r\n"


def wide(parts: int) -> bytes:
    body = b"".join(b"--w\r\nContent-Type: text/plain\r\n\r\np\r\n" for _ in range(parts))
    return HEAD + b'Content-Type: multipart/mixed; boundary="w"\r\n\r\n' + body + b"--w--\r\n"


def long_line(megabytes: int) -> bytes:
    return HEAD + b"X-Long: " + b"a" * (megabytes * 1_000_000) + b"\r\n\r\nbody\r\n"


HOSTILE: dict[str, Callable[[], bytes]] = {
    "multipart nested 3,000 deep": lambda: nested_multipart(3000),
    "multipart nested 250 deep": lambda: nested_multipart(250),
    "message/rfc822 nested 3,000 deep": lambda: nested_rfc822(3000),
    "encoded-word bomb (200k words)": lambda: encoded_word_bomb(200_000),
    "unclosed encoded-words (300k)": lambda: unclosed_words(300_000),
    "truncated at 50% (largest zammad mail)": lambda: truncated(0.5),
    "truncated in the header": lambda: truncated(0.0005),
    "NUL bytes in headers and body": nul_bytes,
    "8-bit garbage headers (2,000)": lambda: garbage_headers(2000),
    "50,000 sibling parts": lambda: wide(50_000),
    "20 MB header line": lambda: long_line(20),
}

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[3])
raw = open(sys.argv[2], "rb").read()
which = sys.argv[1]
start = time.perf_counter()
try:
    if which == "mailbridge.parse":
        from mailbridge.parse import parse
        m = parse(raw)
        out = {"subject": m.subject[:40], "parts": len(m.attachments), "defects": list(m.defects)[:4]}
    elif which == "fast-mail-parser":
        import fast_mail_parser
        m = fast_mail_parser.parse_email(raw)
        out = {"subject": m.subject[:40], "parts": len(m.attachments) + len(m.text_plain),
               "defects": [w.kind for w in m.warnings][:4]}
    else:
        from bench.fmp_hybrid import FALLBACKS, hybrid_parse
        m = hybrid_parse(raw)
        out = {"subject": m.subject[:40], "parts": len(m.attachments),
               "defects": (["fallback:" + k for k in FALLBACKS] + list(m.defects))[:4]}
    out["result"] = "ok"
except Exception as exc:
    out = {"result": type(exc).__name__ + ": " + str(exc)[:70]}
out["seconds"] = round(time.perf_counter() - start, 3)
out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
print(json.dumps(out))
"""


def run_child(which: str, path: str, timeout: float) -> str:
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, which, path, str(REPO)],
            capture_output=True,
            timeout=timeout,
            text=True,
        )
    except subprocess.TimeoutExpired:
        return f"HANG: killed after {timeout:.0f} s"
    if done.returncode < 0:
        return f"CRASH: signal {-done.returncode} after {time.perf_counter() - start:.1f} s"
    if done.returncode != 0:
        return f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1][:90]}"
    out = json.loads(done.stdout)
    detail = f"{out['result']}; {out['seconds']} s, {out['max_rss_mb']} MB"
    if "parts" in out:
        detail += f", parts {out['parts']}, defects {out['defects']}"
    return detail


def hostile(timeout: float) -> None:
    print("## Hostile inputs (each in its own subprocess)\n")
    with tempfile.TemporaryDirectory() as tmp:
        for label, make in HOSTILE.items():
            path = os.path.join(tmp, "input.eml")
            raw = make()
            Path(path).write_bytes(raw)
            print(f"- {label} ({len(raw) / 1e6:.2f} MB)")
            for which in ("mailbridge.parse", "fast-mail-parser", "hybrid"):
                print(f"    {which:<17} {run_child(which, path, timeout)}")


# ------------------------------------------------------------------- what it does not give us

GAPS: dict[str, bytes] = {
    "Authentication-Results with an encoded-word": HEAD
    + b"Authentication-Results: =?utf-8?q?mx=2Eexample=2Ecom?= ; dkim=pass\r\n\r\nbody\r\n",
    "encoded-word in the address": b"From: =?utf-8?q?agent?=@example.com\r\nSubject: x\r\n\r\nb\r\n",
    "raw UTF-8 header bytes": b"From: J\xc3\xbcrgen <j@example.com>\r\nSubject: Gr\xc3\xbc\xc3\x9fe\r\n\r\nb\r\n",
    "mbox From_ line first": b"From j@example.com  Thu May  3 12:04:29 2012\r\n"
    + HEAD
    + b"\r\nb\r\n",
    "leading blank line": b"\r\n" + HEAD + b"\r\nb\r\n",
    "undeclared 8-bit UTF-8 body": HEAD + b"\r\nEnvoy\xc3\xa9 par Bell Mobilit\xc3\xa9\r\n",
    "broken base64 attachment": HEAD + b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
    b"Content-Type: text/plain\r\n\r\nsee file\r\n--b\r\nContent-Type: application/pdf; name=a.pdf\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK=x\r\n--b--\r\n",
    "unknown charset": HEAD + b"Content-Type: text/plain; charset=x-unknown\r\n\r\nb\xe9b\xe9\r\n",
}


def gaps() -> None:
    from mailbridge.parse import parse

    print("\n## What each makes of headers mailbridge relies on\n")
    for label, raw in GAPS.items():
        print(f"- {label}")
        ours = parse(raw)
        print(
            f"    mailbridge.parse  from={ours.from_} subject={ours.subject!r} "
            f"body={ours.body_text[:30]!r} attachments={[(a.filename, a.size) for a in ours.attachments]} "
            f"classify={dict(ours.headers)} defects={list(ours.defects)}"
        )
        try:
            mail = fmp.parse_email(raw)  # type: ignore[union-attr]
        except Exception as exc:
            print(f"    fast-mail-parser  raises {type(exc).__name__}: {str(exc)[:80]}")
            continue
        sender = mail.from_
        print(
            f"    fast-mail-parser  from={(sender.display_name, sender.address) if sender else None} "
            f"subject={mail.subject!r} body={(mail.text_plain or [''])[0][:30]!r} "
            f"attachments={[(a.filename, len(a.content)) for a in mail.attachments]} "
            f"headers={ {k: v for k, v in mail.headers.items() if k.lower() not in ('to', 'message-id')} } "
            f"warnings={[w.kind for w in mail.warnings]}"
        )


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--timeout", type=float, default=30)  # `[parse] timeout`
    args = options.parse_args()
    if fmp is None:
        print("fast-mail-parser is not importable: pip install -e .[bench]")
        return 0
    hostile(args.timeout)
    gaps()
    return 0


if __name__ == "__main__":
    sys.exit(main())
