"""Webhooks: every event an endpoint asked for, as a signed POST, durably, in order, once.

    events (outbox) ──fanout.Dispatcher──▶ webhook_deliveries ──delivery.Deliverer──▶ POST
    agent.connected/disconnected ─┘  (cursor moves in the      (endpoint lease, retries,
      (the presence hook)               same transaction)        attempts recorded)

    addresses.py  SSRF: http(s) only, the host resolved once, private addresses refused
    filters.py    event-type and channel globs
    signing.py    Standard Webhooks 1.0: whsec_ secrets, webhook-id/-timestamp/-signature
    sender.py     one attempt: connect to the checked address, bounded, no redirects
    service.py    the part app/runtime.py starts and stops; the port the domain layer uses

The rules of the endpoints (who may register what, rotation, test, retry) are in
app/domain/webhooks.py; docs/webhooks.md is the user's guide.
"""
