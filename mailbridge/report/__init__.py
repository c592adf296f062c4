"""`mailbridge report`: lifecycle analytics computed from tickets and their events.

JSON keys (durations are seconds, floats rounded to milliseconds; times ISO 8601 UTC with `Z`):

- `generated_at`: the `now` the report was computed for.
- `tickets`: `{total, by_status: {status: n}}`, every status listed.
- `first_response`, `resolution`: `{count, pending, mean, p50, p90, p99}`. First response is
  created -> first `agent-reply` event; resolution is created -> first `resolve` or `close`
  event. `count` tickets have one; `pending` live tickets (not spam, deleted) have none yet.
  Percentiles interpolate linearly between ranks; all are null when `count` is 0.
- `reopen`: `{resolved, reopened, rate}`. `resolved` tickets ever reached resolved or closed;
  `reopened` of them came back: a transition from resolved or closed to open, or a follow-up
  ticket (customer mail on a closed ticket) links to them. `rate` = reopened / resolved, or null.
- `time_in_status`: `{status: {tickets, total_seconds, mean_seconds}}`, every status listed:
  time between consecutive status changes, the current status counting until `now`;
  `mean_seconds` is per ticket that spent time in the status (null if none did).
- `mailboxes`: `{mailbox: {tickets, by_status}}` by the source that created the ticket.
- `period`: `{since, until}` as asked (`--since`, `--until`), null when open. Only tickets
  created in the period count; time in status ends at `until` when that is before `now`.
- `created_per_day`: `{YYYY-MM-DD: {queue: n}}` for every day from the first ticket to the last
  (or the period's bounds), days without tickets at 0.
- `queues`: `{queue: {tickets, by_status, first_response, resolution}}`, the two delays as above
  plus `histogram`: `[{bucket, count}]` over `HISTOGRAM_BUCKETS`; a ticket's queue is read in
  one place (`queue_of`).
- `transitions`: `[{from, to, count}]`, how often each status change happened (events with a
  from and a to status that differ; `created` counts as from null), most frequent first.
- `closed_by`: `{customer, agent, rule}`: closes (a change to `closed`) by the customer's
  confirmation (detail `confirmed by customer`), by a `[[rules]]` rule (actor `rule:...`), and
  by anyone else (an agent's `#close` or the CLI). A confirmation is a close, not a reopen.
- `sla`: `{configured, met, breached, rate, queues: {queue: {met, breached, rate}}}` over the
  tickets an `[[sla]]` applies to (SPEC 8): `breached` tickets have an `sla-breach` event,
  `met` ones do not (yet); `rate` = met / (met + breached), or null. `configured` is false
  while no ticket has an SLA.
- `by_queue`, `by_owner`, `by_tag`, `by_priority` (SPEC 7): `{key: {tickets, share, open_now,
  first_response_p50, first_response_p90, resolution_p50, resolution_p90, reopen_rate}}`.
  `share` is of all tickets in the period (a ticket with two tags counts under both);
  `open_now` are in new, open, answered or postponed; unowned and untagged tickets are under
  `(none)`; the delays are seconds or null, `reopen_rate` 0..1 or null.

The package: `data` (the rows from storage, and `summarize` assembling the report from them),
`sections` and `breakdowns` (one pure function per key), `stats` (percentiles, histogram),
`text` (the tables of `mailbridge report`), `html` (the page of `--html`).
"""

from __future__ import annotations

from mailbridge.report.data import build_report, summarize
from mailbridge.report.stats import histogram, percentile
from mailbridge.report.text import human_duration, render

__all__ = [
    "build_report",
    "histogram",
    "human_duration",
    "percentile",
    "render",
    "summarize",
]
