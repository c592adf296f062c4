"""A realistic, reproducible mix of support mail: new tickets, threaded replies, attachments,
HTML-only mail, non-ASCII names and subjects, auto-replies. Used by every benchmark."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

SUBJECTS = [
    "Printer on fire",
    "Cannot log in since the update",
    "Rechnung Nr. 4711 – falscher Betrag",
    "Заказ не доставлен",
    "請求書について",
    "VPN drops every 10 minutes",
    "Refund request for order #88231",
    "Café menu PDF is broken",
]
NAMES = [
    "Carol Customer",
    "José Álvarez",
    "Jürgen Groß",
    "Мария Иванова",
    "山田太郎",
    "Li Wei",
    "Zoë Brontë",
]
BODY = (
    "Hello support team,\n\n"
    "since this morning {topic}. I tried restarting twice and clearing the cache, but it keeps happening.\n"
    "Could you please have a look? Order reference {ref}.\n\n"
    "Thanks and best regards,\n{name}\n"
)


def _base(rng: random.Random, i: int, name: str, addr: str, subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"{name} <{addr}>"
    msg["To"] = "support@example.com"
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime(2026, 11, 1, tzinfo=UTC) + timedelta(seconds=i * 7))
    msg["Message-ID"] = make_msgid(idstring=f"m{i}", domain="customer.example")
    msg["Received"] = (
        f"from mx{rng.randint(1, 9)}.customer.example by mx.example.com; {msg['Date']}"
    )
    return msg


def generate(count: int, seed: int = 7) -> Iterator[bytes]:
    """`count` messages: ~55 % new, ~30 % replies to earlier ones, ~8 % with attachments,
    ~7 % HTML-only, ~3 % auto-replies; a third with non-ASCII names or subjects."""
    rng = random.Random(seed)
    sent: list[tuple[str, str, str]] = []  # (message-id, subject, sender)
    pdf = b"%PDF-1.4\n" + bytes(rng.getrandbits(8) for _ in range(40_000))
    for i in range(count):
        roll = rng.random()
        name = rng.choice(NAMES)
        addr = f"user{rng.randint(1, 4000)}@customer{rng.randint(1, 50)}.example"
        topic = rng.choice(
            ["the portal shows error 500", "my invoice is wrong", "the app crashes on start"]
        )
        body = BODY.format(topic=topic, ref=rng.randint(10000, 99999), name=name)
        if roll < 0.30 and sent:
            mid, subject, addr = rng.choice(sent[-500:])
            msg = _base(rng, i, name, addr, f"Re: {subject}")
            msg["In-Reply-To"] = mid
            msg["References"] = mid
            msg.set_content("Any news on this?\n\n> " + body.replace("\n", "\n> "))
        elif roll < 0.33 and sent:
            mid, subject, addr = rng.choice(sent[-500:])
            msg = _base(rng, i, "Auto Responder", addr, f"Automatic reply: {subject}")
            msg["Auto-Submitted"] = "auto-replied"
            msg["In-Reply-To"] = mid
            msg.set_content("I am out of the office until Monday.")
        else:
            subject = rng.choice(SUBJECTS)
            msg = _base(rng, i, name, addr, subject)
            if roll < 0.40:
                html = "<html><body><p>" + body.replace("\n", "<br>") + "</p></body></html>"
                msg.set_content(html, subtype="html")
            else:
                msg.set_content(body)
                if roll < 0.48:
                    msg.add_attachment(
                        pdf[: rng.randint(2_000, 40_000)],
                        maintype="application",
                        subtype="pdf",
                        filename="scan.pdf",
                    )
                elif roll < 0.52:
                    msg.add_alternative("<p>" + body + "</p>", subtype="html")
            sent.append((msg["Message-ID"], subject, addr))
        yield msg.as_bytes()
