"""The async WebSocket client: request/ack futures, reconnect with backoff, resubscribe, recovery.

    async with RealtimeClient("ws://127.0.0.1:3849/ws", agent_id="worker-1") as client:
        await client.publish("topics/deploys", "deploy.started", {"sha": "abc"})
        async for event in client.events("global", event="task.*"):
            print(event.event, event.data)

It behaves like the browser client (app/dashboard/static/client.js): states connecting →
connected → reconnecting → connected (or offline when it gives up, closed after close());
the seed's keepalive ping every 25 s, with silence treated as a dead connection; every channel
resubscribed after a reconnect, with `since` = the last offset/epoch seen so a server that keeps
history replays what was missed. When it could not (`recovered: false` in the resubscribe's
ack, or an `unrecovered` frame: the server lost publications of a channel, e.g. Redis restarted
without persistence) `on_recovery` callbacks get a `Recovery` — reload that channel's state —
and the position moves to where the server's stream goes on. A publish in flight when the
connection drops fails with `RealtimeError("DISCONNECTED")`: it may or may not have been
delivered, the caller decides.

Exceptions::

    RealtimeError            code + message
      code = the server's error code (INVALID_CHANNEL, FORBIDDEN, …) from its error frame,
             or TIMEOUT, DISCONNECTED, CLOSED, OFFLINE, QUEUE_FULL for local failures
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import json
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from context_manager_client.backoff import Backoff, event_matcher, should_reconnect

logger = logging.getLogger("context_manager.client")


_HINT = re.compile(r"reconnect:(\d{1,7})")


def reconnect_hint(reason: str, maximum: float) -> float | None:
    """Seconds to wait named by a draining server ("reconnect:<ms>" with 1012), if any.

    A node going down gives each client its own delay so they come back spread out.
    """
    match = _HINT.fullmatch(reason or "")
    return None if match is None else min(int(match.group(1)) / 1000, maximum)


class ConnectionState(enum.StrEnum):
    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    OFFLINE = "offline"  # gave up: a "do not reconnect" close code or retries exhausted
    CLOSED = "closed"  # close() was called


class RealtimeError(Exception):
    """An error frame from the server, or a local failure of a request (see the module doc)."""

    def __init__(self, code: str, message: str, frame: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.frame = frame


@dataclass(frozen=True, slots=True)
class Event:
    """One event delivered on a channel."""

    channel: str
    event: str
    data: Any
    timestamp: int
    offset: int | None = None
    epoch: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_frame(cls, frame: dict[str, Any]) -> Event:
        offset = frame.get("offset")
        epoch = frame.get("epoch")
        return cls(
            channel=frame["channel"],
            event=frame["event"],
            data=frame.get("data"),
            timestamp=int(frame.get("timestamp") or 0),
            offset=offset if isinstance(offset, int) else None,
            epoch=epoch if isinstance(epoch, str) else None,
            raw=frame,
        )


@dataclass(frozen=True, slots=True)
class Recovery:
    """Whether a channel's missed events were recovered; on False, reload its state.

    `reason` is "resubscribe" (the ack of a resubscribe with `since`), or the server's
    `unrecovered` reason: "new_epoch" (the stream restarted: its history was lost) or "gap"
    (the history no longer reached back far enough). `offset`/`epoch` is the position the
    events that follow continue from.
    """

    channel: str
    recovered: bool
    offset: int | None
    epoch: str | None
    reason: str
    replayed: int = 0
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class StateChange:
    state: ConnectionState
    previous: ConnectionState
    attempt: int
    delay: float | None = None
    code: int | None = None
    reason: str = ""


@dataclass(slots=True)
class _Subscription:
    confirmed: bool = False
    inflight: bool = False
    ack: dict[str, Any] | None = None
    waiters: list[asyncio.Future[dict[str, Any]]] = field(default_factory=list)


_CLOSED = object()  # pushed into event queues when the client closes


class _EventQueue:
    """A bounded queue of events for one `events()` iterator; drops the oldest on overflow."""

    def __init__(self, channels: frozenset[str], pattern: str | None, maxsize: int) -> None:
        self.channels = channels
        self.matches = event_matcher(pattern)
        self.items: deque[Any] = deque(maxlen=maxsize)
        self.dropped = 0
        self.ready = asyncio.Event()

    def put(self, item: Any) -> None:
        if len(self.items) == self.items.maxlen:
            self.dropped += 1
        self.items.append(item)
        self.ready.set()

    async def get(self) -> Any:
        while not self.items:
            self.ready.clear()
            await self.ready.wait()
        return self.items.popleft()


StateCallback = Callable[[StateChange], None]
EventCallback = Callable[[Event], None]
RecoveryCallback = Callable[[Recovery], None]


class RealtimeClient:
    """A WebSocket client of context-manager that stays connected until closed."""

    def __init__(
        self,
        url: str,
        *,
        agent_id: str | None = None,
        session_id: str | None = None,
        token: str | None = None,
        ping_interval: float = 25.0,
        pong_timeout: float = 10.0,
        request_timeout: float = 10.0,
        open_timeout: float = 10.0,
        backoff: Backoff | None = None,
        max_retries: int | None = None,
        recover: bool = True,
        queue_size: int = 10_000,
        max_queued: int = 1_000,
    ) -> None:
        self.url = url
        self.agent_id = agent_id
        self.session_id = session_id
        self.token = token
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.request_timeout = request_timeout
        self.open_timeout = open_timeout
        self.backoff = backoff or Backoff()
        self.max_retries = max_retries
        self.recover = recover
        self.queue_size = queue_size
        self.max_queued = max_queued

        self.state = ConnectionState.IDLE
        self.client_id: str | None = None
        self.attempt = 0
        self.connections = 0  # successful connections so far (1 + reconnects)
        self.last_close_code: int | None = None

        self._ws: ClientConnection | None = None
        self._runner: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._id_prefix = f"py{secrets.token_hex(3)}-"
        self._pending: dict[str, tuple[asyncio.Future[dict[str, Any]], dict[str, Any]]] = {}
        self._outbox: deque[str] = deque()
        self._subs: dict[str, _Subscription] = {}
        self._positions: dict[str, tuple[int, str | None]] = {}
        self._queues: set[_EventQueue] = set()
        self._state_callbacks: list[StateCallback] = []
        self._event_callbacks: list[EventCallback] = []
        self._recovery_callbacks: list[RecoveryCallback] = []
        self._state_changed = asyncio.Condition()
        self._wake = asyncio.Event()
        self._last_frame = asyncio.get_running_loop().time()
        self._closing = False
        self._background: set[asyncio.Task[None]] = set()

    # --- lifecycle -----------------------------------------------------------------------

    async def connect(self, wait: bool = True, timeout: float | None = None) -> None:
        """Start connecting (and reconnecting); with `wait`, return once connected."""
        if self._runner is None:
            self._closing = False
            self._runner = asyncio.create_task(self._run(), name="realtime-client")
        if wait:
            final = (ConnectionState.CONNECTED, ConnectionState.OFFLINE, ConnectionState.CLOSED)
            await self._wait_until(lambda: self.state in final, timeout or self.open_timeout)
            if self.state is not ConnectionState.CONNECTED:
                raise RealtimeError("OFFLINE", f"could not connect to {self.url}")

    async def close(self) -> None:
        """Close for good; pending requests fail with CLOSED and iterators end."""
        self._closing = True
        self._wake.set()
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close(1000, "client closed")
        for task in list(self._background):
            task.cancel()
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        self._fail_pending("CLOSED", "client closed")
        self._fail_waiters("CLOSED", "client closed")
        for queue in self._queues:
            queue.put(_CLOSED)
        await self._set_state(ConnectionState.CLOSED)

    async def __aenter__(self) -> RealtimeClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self.state is ConnectionState.CONNECTED

    def on_state(self, callback: StateCallback) -> Callable[[], None]:
        """Call `callback(StateChange)` on every state change; returns a remover."""
        self._state_callbacks.append(callback)
        return lambda: self._state_callbacks.remove(callback)

    def on_event(self, callback: EventCallback) -> Callable[[], None]:
        """Call `callback(Event)` for every event received; returns a remover."""
        self._event_callbacks.append(callback)
        return lambda: self._event_callbacks.remove(callback)

    def on_recovery(self, callback: RecoveryCallback) -> Callable[[], None]:
        """Call `callback(Recovery)` after each recovery attempt and server loss notice.

        On `recovered` False the channel's events before `offset`/`epoch` may be lost: reload
        the channel's state (over REST); the events that follow continue from there.
        """
        self._recovery_callbacks.append(callback)
        return lambda: self._recovery_callbacks.remove(callback)

    async def wait_for_state(self, state: ConnectionState, timeout: float | None = None) -> None:
        """Wait until the client is in `state`; raise RealtimeError(TIMEOUT) after `timeout`."""
        await self._wait_until(lambda: self.state is state, timeout, str(state))

    async def _wait_until(
        self, predicate: Callable[[], bool], timeout: float | None, what: str = "ready"
    ) -> None:
        async def _wait() -> None:
            async with self._state_changed:
                await self._state_changed.wait_for(predicate)

        try:
            async with asyncio.timeout(timeout):
                await _wait()
        except TimeoutError:
            raise RealtimeError("TIMEOUT", f"not {what} within {timeout} s") from None

    async def _set_state(self, state: ConnectionState, **extra: Any) -> None:
        if state is self.state and state is not ConnectionState.RECONNECTING:
            return
        change = StateChange(state, self.state, self.attempt, **extra)
        self.state = state
        for callback in list(self._state_callbacks):
            try:
                callback(change)
            except Exception:  # noqa: BLE001 - a callback's bug must not break the client
                logger.exception("state callback failed")
        async with self._state_changed:
            self._state_changed.notify_all()

    def _build_url(self) -> str:
        parts = urlsplit(self.url)
        query = dict(parse_qsl(parts.query))
        for key, value in (
            ("agent_id", self.agent_id),
            ("session_id", self.session_id),
            ("token", self.token),
        ):
            if value:
                query[key] = value
        return urlunsplit(parts._replace(query=urlencode(query)))

    # --- the connection loop ---------------------------------------------------------------

    async def _run(self) -> None:
        await self._set_state(ConnectionState.CONNECTING)
        while not self._closing:
            code: int | None = None
            reason = ""
            try:
                async with connect(
                    self._build_url(),
                    open_timeout=self.open_timeout,
                    # The seed's application-level ping is ours (below); no second keepalive.
                    ping_interval=None,
                    max_size=None,
                    close_timeout=2,
                ) as ws:
                    self._ws = ws
                    try:
                        await self._session(ws)
                    finally:
                        self._ws = None
                code, reason = ws.close_code, ws.close_reason or ""
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                reason = str(exc) or type(exc).__name__
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else 1006
                reason = exc.rcvd.reason if exc.rcvd is not None else ""
            self.last_close_code = code
            self.client_id = None
            self._connection_lost()
            if self._closing:
                return
            if not should_reconnect(code):
                await self._set_state(
                    ConnectionState.OFFLINE, code=code, reason=reason or f"closed with {code}"
                )
                self._give_up(f"closed with {code}: {reason}")
                return
            if self.max_retries is not None and self.attempt >= self.max_retries:
                await self._set_state(ConnectionState.OFFLINE, code=code, reason="gave up")
                self._give_up("gave up reconnecting")
                return
            delay = reconnect_hint(reason, self.backoff.maximum)
            if delay is None:
                delay = self.backoff.delay(self.attempt)
            self.attempt += 1
            await self._set_state(
                ConnectionState.RECONNECTING, delay=delay, code=code, reason=reason
            )
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                # asyncio.timeout, not wait_for: on 3.11 wait_for drops a cancellation that
                # comes with the wake, and close() does both at once.
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def _session(self, ws: ClientConnection) -> None:
        async with asyncio.timeout(self.open_timeout):
            hello = json.loads(await ws.recv())
        if hello.get("type") != "connected":
            raise InvalidHandshake(f"expected a connected frame, got {hello!r}")
        self.client_id = hello.get("client_id")
        self.attempt = 0
        self.connections += 1
        self._last_frame = asyncio.get_running_loop().time()
        await self._set_state(ConnectionState.CONNECTED)
        helpers = [asyncio.create_task(self._keepalive(ws), name="realtime-keepalive")]
        try:
            # Resubscribe before anything queued goes out, so a queued publish sees its echo.
            for channel in list(self._subs):
                helpers.append(asyncio.create_task(self._send_subscribe(channel)))
            while self._outbox:
                await ws.send(self._outbox.popleft())
            async for raw in ws:
                self._last_frame = asyncio.get_running_loop().time()
                self._dispatch(raw)
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    async def _keepalive(self, ws: ClientConnection) -> None:
        if not self.ping_interval:
            return
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + self.ping_interval
        unanswered: float | None = None  # when the ping still waiting for any frame was sent
        while True:
            deadline = (
                next_ping if unanswered is None else min(next_ping, unanswered + self.pong_timeout)
            )
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            now = loop.time()
            if unanswered is not None and self._last_frame >= unanswered:
                unanswered = None
            if unanswered is not None and now >= unanswered + self.pong_timeout:
                # Silence after a ping: the TCP connection is gone (sleep, NAT, cable).
                logger.info("no answer to ping within %.1f s; reconnecting", self.pong_timeout)
                await ws.close(4000, "keepalive timeout")
                return
            if now >= next_ping:
                await ws.send(json.dumps({"type": "ping", "timestamp": int(time.time() * 1000)}))
                unanswered = unanswered if unanswered is not None else now
                next_ping = now + self.ping_interval

    def _connection_lost(self) -> None:
        # A publish in flight may or may not have been delivered: say so. Subscriptions are
        # re-sent on reconnect and their waiters resolve with that ack.
        for request_id, (future, message) in list(self._pending.items()):
            if message.get("type") == "subscribe":
                self._pending.pop(request_id, None)
                future.cancel()
            elif not future.done():
                self._pending.pop(request_id, None)
                future.set_exception(
                    RealtimeError("DISCONNECTED", "connection lost before the server answered")
                )
        for sub in self._subs.values():
            sub.confirmed = False
            sub.inflight = False

    def _give_up(self, message: str) -> None:
        self._fail_pending("OFFLINE", message)
        self._fail_waiters("OFFLINE", message)
        for queue in self._queues:
            queue.put(RealtimeError("OFFLINE", message))

    # --- frames ----------------------------------------------------------------------------

    def _dispatch(self, raw: str | bytes) -> None:
        try:
            frame = json.loads(raw)
        except ValueError:
            return
        if not isinstance(frame, dict):
            return
        kind = frame.get("type")
        if kind == "ack":
            entry = self._pending.get(frame.get("id"))  # type: ignore[arg-type]
            if entry is not None and entry[1].get("type") == "subscribe":
                # Before any event that follows this ack is dispatched: see _track_subscribe.
                self._track_subscribe(entry[1], frame)
            self._settle(frame.get("id"), frame, None)
        elif kind in ("pong", "connected"):
            return
        elif kind == "unrecovered":
            self._unrecovered(frame)
        elif "error" in frame and "code" in frame:
            error = RealtimeError(str(frame["code"]), str(frame["error"]), frame)
            if not self._settle(frame.get("id"), None, error):
                logger.warning("server error: %s", error)
        elif isinstance(frame.get("event"), str) and isinstance(frame.get("channel"), str):
            event = Event.from_frame(frame)
            if event.offset is not None:
                seen = self._positions.get(event.channel)
                if seen is not None and seen[1] == event.epoch and event.offset <= seen[0]:
                    return  # already delivered (a replay overlapping what arrived live)
                self._positions[event.channel] = (event.offset, event.epoch)
            for queue in self._queues:
                if (not queue.channels or event.channel in queue.channels) and queue.matches(
                    event.event
                ):
                    queue.put(event)
            for callback in list(self._event_callbacks):
                try:
                    callback(event)
                except Exception:  # noqa: BLE001 - a callback's bug must not break the client
                    logger.exception("event callback failed")

    def _unrecovered(self, frame: dict[str, Any]) -> None:
        """The server lost publications of a channel up to (offset, epoch); go on from there."""
        channel, offset, epoch = frame.get("channel"), frame.get("offset"), frame.get("epoch")
        if not isinstance(channel, str) or channel not in self._subs:
            return
        if not isinstance(offset, int) or not isinstance(epoch, str):
            return
        # Even behind our position in the same epoch: the stream was rolled back, and the
        # offsets that follow are new publications, not repeats to drop.
        self._positions[channel] = (offset, epoch)
        self._report_recovery(
            Recovery(channel, False, offset, epoch, str(frame.get("reason") or ""), raw=frame)
        )

    def _report_recovery(self, recovery: Recovery) -> None:
        if not recovery.recovered:
            logger.info(
                "could not recover %s (%s): reload its state", recovery.channel, recovery.reason
            )
        for callback in list(self._recovery_callbacks):
            try:
                callback(recovery)
            except Exception:  # noqa: BLE001 - a callback's bug must not break the client
                logger.exception("recovery callback failed")

    def _settle(
        self, request_id: Any, ack: dict[str, Any] | None, error: RealtimeError | None
    ) -> bool:
        if not isinstance(request_id, str):
            return False
        entry = self._pending.pop(request_id, None)
        if entry is None:
            return False
        future = entry[0]
        if not future.done():
            if error is not None:
                future.set_exception(error)
            else:
                assert ack is not None
                future.set_result(ack)
        return True

    def _fail_pending(self, code: str, message: str) -> None:
        for future, _message in self._pending.values():
            if not future.done():
                future.set_exception(RealtimeError(code, message))
        self._pending.clear()
        self._outbox.clear()

    def _fail_waiters(self, code: str, message: str) -> None:
        for sub in self._subs.values():
            self._reject_waiters(sub, RealtimeError(code, message))

    @staticmethod
    def _reject_waiters(sub: _Subscription, error: RealtimeError) -> None:
        for waiter in sub.waiters:
            if not waiter.done():
                waiter.set_exception(error)
        sub.waiters.clear()

    # --- requests --------------------------------------------------------------------------

    async def request(
        self, message: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        """Send `message` with a fresh id; return its ack, raise RealtimeError on its error."""
        if self.state is ConnectionState.CLOSED or self._closing:
            raise RealtimeError("CLOSED", "client closed")
        request_id = f"{self._id_prefix}{next(self._ids)}"
        frame = {**message, "id": request_id, "timestamp": int(time.time() * 1000)}
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (future, frame)
        text = json.dumps(frame)
        ws = self._ws
        if self.connected and ws is not None:
            try:
                await ws.send(text)
            except ConnectionClosed:
                pass  # _connection_lost settles the future
        elif frame.get("type") != "subscribe":
            if len(self._outbox) >= self.max_queued:
                self._pending.pop(request_id, None)
                raise RealtimeError("QUEUE_FULL", "too many messages waiting for a connection")
            self._outbox.append(text)
        try:
            async with asyncio.timeout(timeout if timeout is not None else self.request_timeout):
                return await future
        except TimeoutError:
            raise RealtimeError(
                "TIMEOUT", f"no answer to {message.get('type')} within the timeout"
            ) from None
        finally:
            self._pending.pop(request_id, None)

    async def subscribe(self, channel: str, timeout: float | None = None) -> dict[str, Any]:
        """Subscribe (kept across reconnects until unsubscribe); return the server's ack.

        Waits for a connection if there is none yet; `timeout` None means request_timeout.
        """
        return await self._subscribe(
            channel, timeout if timeout is not None else self.request_timeout
        )

    async def _subscribe(self, channel: str, timeout: float | None) -> dict[str, Any]:
        """subscribe() with `timeout` None meaning: as long as it takes."""
        sub = self._subs.get(channel)
        if sub is not None and sub.confirmed and sub.ack is not None:
            return sub.ack
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if sub is None:
            sub = self._subs[channel] = _Subscription()
            sub.waiters.append(waiter)
            if self.connected:
                sub.inflight = True
                self._spawn(self._send_subscribe(channel))
        else:
            sub.waiters.append(waiter)
            if self.connected and not sub.confirmed and not sub.inflight:
                # An earlier attempt timed out: ask again rather than wait for a reconnect.
                sub.inflight = True
                self._spawn(self._send_subscribe(channel))
        try:
            async with asyncio.timeout(timeout):
                return await waiter
        except TimeoutError:
            with contextlib.suppress(ValueError):
                sub.waiters.remove(waiter)
            raise RealtimeError("TIMEOUT", f"no answer to subscribe {channel}") from None

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        # The loop keeps only weak references to tasks: hold them until they are done.
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send_subscribe(self, channel: str) -> None:
        sub = self._subs.get(channel)
        if sub is None:
            return
        message: dict[str, Any] = {"type": "subscribe", "channel": channel}
        position = self._positions.get(channel) if self.recover else None
        if position is not None and position[1] is not None:
            message["since"] = {"offset": position[0], "epoch": position[1]}
        sub.inflight = True
        try:
            ack = await self.request(message)
        except RealtimeError as exc:
            sub.inflight = False
            if self._subs.get(channel) is not sub or exc.code in (
                "DISCONNECTED",
                "TIMEOUT",
                "CLOSED",
            ):
                return
            # Refused by the server (invalid channel, forbidden, too many): stop asking.
            del self._subs[channel]
            self._reject_waiters(sub, exc)
            return
        except asyncio.CancelledError:
            sub.inflight = False
            return
        sub.inflight = False
        if self._subs.get(channel) is not sub:
            return
        sub.confirmed = True
        sub.ack = ack
        for waiter in sub.waiters:
            if not waiter.done():
                waiter.set_result(ack)
        sub.waiters.clear()

    def _track_subscribe(self, message: dict[str, Any], ack: dict[str, Any]) -> None:
        """Start from the stream's top when there was nothing to recover from, or when the
        gap could not be recovered; after a recovery the replayed events advance it."""
        offset = ack.get("offset")
        channel = message.get("channel")
        if not isinstance(offset, int) or not isinstance(channel, str):
            return
        epoch = ack.get("epoch")
        epoch = epoch if isinstance(epoch, str) else None
        recovered = ack.get("recovered")
        if "since" not in message or recovered is False:
            self._positions[channel] = (offset, epoch)
        if "since" in message and isinstance(recovered, bool):
            # Here, before the replayed events that follow the ack are dispatched.
            replayed = ack.get("replayed")
            self._report_recovery(
                Recovery(
                    channel,
                    recovered,
                    offset,
                    epoch,
                    "resubscribe",
                    replayed if isinstance(replayed, int) else 0,
                    raw=ack,
                )
            )

    async def unsubscribe(self, channel: str) -> dict[str, Any] | None:
        """Stop receiving `channel` and stop resubscribing to it."""
        sub = self._subs.pop(channel, None)
        self._positions.pop(channel, None)
        if sub is not None:
            self._reject_waiters(sub, RealtimeError("UNSUBSCRIBED", "unsubscribed"))
        if not self.connected:
            return None
        return await self.request({"type": "unsubscribe", "channel": channel})

    @property
    def channels(self) -> list[str]:
        """Channels this client keeps subscribed."""
        return list(self._subs)

    def position(self, channel: str) -> dict[str, Any] | None:
        """The last {offset, epoch} seen on `channel` (for apps that keep their own)."""
        position = self._positions.get(channel)
        return None if position is None else {"offset": position[0], "epoch": position[1]}

    async def publish(
        self, channel: str, event: str, data: Any = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """Publish `event` on `channel`; return the ack (with the publication's offset)."""
        return await self.request(
            {"type": "publish", "channel": channel, "event": event, "data": data}, timeout
        )

    async def auth(
        self,
        agent_id: str | None = None,
        session_id: str | None = None,
        token: str | None = None,
    ) -> dict[str, Any]:
        """Change identity; reconnects use it too."""
        message: dict[str, Any] = {"type": "auth"}
        for key, value in (("agent_id", agent_id), ("session_id", session_id), ("token", token)):
            if value is not None:
                setattr(self, key, value)
                message[key] = value
        return await self.request(message)

    async def history(
        self, channel: str, since: dict[str, Any] | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        """The channel's retained publications after `since` (the server's `history` request)."""
        message: dict[str, Any] = {"type": "history", "channel": channel}
        if since is not None:
            message["since"] = since
        if limit is not None:
            message["limit"] = limit
        return await self.request(message)

    async def events(self, *channels: str, event: str | None = None) -> AsyncIterator[Event]:
        """Yield events of `channels` (all subscribed channels when none), filtered by `event`.

        Subscribes to the channels first (waiting for a connection as long as it takes).
        The iterator ends when the client is closed and raises RealtimeError when it goes
        offline for good. Each iterator has its own bounded queue (`queue_size`, oldest dropped).
        """
        queue = _EventQueue(frozenset(channels), event, self.queue_size)
        self._queues.add(queue)
        try:
            for channel in channels:
                await self._subscribe(channel, None)
            while True:
                item = await queue.get()
                if item is _CLOSED:
                    return
                if isinstance(item, RealtimeError):
                    raise item
                yield item
        finally:
            self._queues.discard(queue)
