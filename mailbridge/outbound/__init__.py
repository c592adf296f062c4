"""Outbound: the mail mailbridge writes about tickets, and its webhook posts.

Decided at ingest, written by the sender. A mail is decided inside the unit of work of the change
that causes it (a new ticket, a customer's or an agent's reply, a rule, an SLA breach, a failed
delivery): who gets it and every header value, its Message-ID included, kept as a
`compose.Pending` in the outbox row's `spec`. The same transaction stores the ticket's copy of
the mail (without bytes yet) and indexes its Message-ID for threading, so the mail, its copy and
their cause commit together or not at all. The MIME bytes are written later, by the sender just
before the first delivery attempt: the email package is slow, and a customer's mail must not
wait for the notifications it causes. The sender writes them outside any transaction, then
stores them on the outbox row and on the ticket's copy in one short transaction; a retry sends
the same bytes.

In the order a mail passes them:

    decide.py      `Outbound`: what ingest causes (acknowledgement, notifications, relayed replies)
    notices.py     `Notices`, its base: rule notices, reminders, escalations, SLA breaches,
                   refused commands and failed deliveries (the sweeps and the sender call these)
    recipients.py  whom a mail reaches
    drafts.py      a `Draft` becomes a `Pending`, the ticket's copy and the outbox row
    config.py      `OutboundConfig`: what all of the above read from the settings
    sender.py      `OutboxSender`: claims due rows, has them written, sends them, records results
    claim.py       claimed rows, their lease, and the result of an attempt
    writer.py      gives claimed rows their bytes
    compose.py     PURE: a `Pending` as MIME
    smarthost.py   the SMTP client
    webhooks.py    webhook rows: queued by storage with their event, posted by the sender
"""
