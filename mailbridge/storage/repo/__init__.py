"""Every query mailbridge makes, by aggregate; functions take the unit of work's session.

Callers write `repo.some_function(session, ...)`: each module below owns one aggregate, and this
package re-exports their public functions.
"""

from __future__ import annotations

from mailbridge.storage.repo.coordination import (
    acquire_lease,
    imap_checkpoint,
    lease_holder,
    release_lease,
    save_imap_checkpoint,
    take_turn,
)
from mailbridge.storage.repo.dedup import known_dedup_keys, seen_dedup_key
from mailbridge.storage.repo.due import (
    due_postponed,
    idle_tickets_in,
    sla_due_tickets,
    sla_stale_tickets,
)
from mailbridge.storage.repo.events import (
    EventRecord,
    add_events,
    all_events,
    install_webhooks,
    ticket_events,
)
from mailbridge.storage.repo.limits import limit_reached
from mailbridge.storage.repo.messages import (
    add_message,
    get_message,
    last_customer_message_id,
    message_ids_before,
    raw_of_messages,
    ticket_messages,
)
from mailbridge.storage.repo.outbox import (
    Written,
    claim_outbox,
    get_outbox,
    list_outbox,
    mark_sent,
    outbox_counts,
    outbox_specs,
    queue_outbound,
    renew_outbox,
    save_written,
)
from mailbridge.storage.repo.quarantine import add_quarantine, get_quarantine, list_quarantine
from mailbridge.storage.repo.queues import (
    add_tags,
    all_tags,
    last_owner,
    open_counts,
    queue_summary,
    remove_tags,
    tags_of,
    unassigned_counts,
)
from mailbridge.storage.repo.threads import (
    add_participants,
    add_thread_keys,
    is_participant,
    participants,
    prefetch_threads,
    ticket_by_token,
    ticket_for_thread_index,
    tickets_for_message_ids,
)
from mailbridge.storage.repo.tickets import (
    add_ticket,
    all_tickets,
    apply_state,
    count_new_tickets_from,
    get_ticket,
    list_tickets,
    lock_ticket,
    lock_ticket_if,
    purge_ticket,
    save_transition,
    status_counts,
    ticket_state,
)

__all__ = [
    "EventRecord",
    "Written",
    "acquire_lease",
    "add_events",
    "add_message",
    "add_participants",
    "add_quarantine",
    "add_tags",
    "add_thread_keys",
    "add_ticket",
    "all_events",
    "all_tags",
    "all_tickets",
    "apply_state",
    "claim_outbox",
    "count_new_tickets_from",
    "due_postponed",
    "get_message",
    "get_outbox",
    "get_quarantine",
    "get_ticket",
    "idle_tickets_in",
    "imap_checkpoint",
    "install_webhooks",
    "is_participant",
    "known_dedup_keys",
    "last_customer_message_id",
    "last_owner",
    "lease_holder",
    "limit_reached",
    "list_outbox",
    "list_quarantine",
    "list_tickets",
    "lock_ticket",
    "lock_ticket_if",
    "mark_sent",
    "message_ids_before",
    "open_counts",
    "outbox_counts",
    "outbox_specs",
    "participants",
    "prefetch_threads",
    "purge_ticket",
    "queue_outbound",
    "queue_summary",
    "raw_of_messages",
    "release_lease",
    "remove_tags",
    "renew_outbox",
    "save_imap_checkpoint",
    "save_transition",
    "save_written",
    "seen_dedup_key",
    "sla_due_tickets",
    "sla_stale_tickets",
    "status_counts",
    "tags_of",
    "take_turn",
    "ticket_by_token",
    "ticket_events",
    "ticket_for_thread_index",
    "ticket_messages",
    "ticket_state",
    "tickets_for_message_ids",
    "unassigned_counts",
]
