"""The domain layer: the rules of tasks, subtasks, messages, agents, sessions, actions, events.

Every front door — the REST routes (app/api/routes), the WebSocket endpoint (through the
ConnectionManager's storage hooks, app/runtime.py) and the MCP tools — parses its input, calls
a function here with a `Context` (context.py: database session, the identity acting, the
realtime, presence and group-commit ports), and shapes the answer. A rule lives here once:

    access.py       who may do what to whose data (the ownership table)
    errors.py       NotFound, Forbidden, Invalid, Conflict (AlreadyExists, IllegalTransition)
    lifecycle.py    the status machine tasks and subtasks share
    pagination.py   keyset pages and their cursors
    rows.py         generated ids, insert-or-refuse (alone, or with the next group commit)
    tasks.py subtasks.py messages.py agents.py sessions.py actions.py events.py channels.py

Domain functions raise domain errors only; the doors map them (app/api/errors.py → HTTP). This
package imports nothing from app.api, and its `__init__` nothing at all (no import cycles).
"""
