"""Group commit: what concurrent threads of one process would write one by one, written in one go.

A thread that finds no write in flight writes its item at once, alone, so a
quiet process waits for nothing. Threads that arrive while a write is in flight
queue their items; when it ends, the first of them writes all that queued (up to
`limit`) together, on its own thread and database connection, and hands
each thread its own result. The busier the database, the longer a write takes
and the more items the next one carries.

Used for the claims of inbound webhooks (runs.start.start_claimed): in one web
process a few requests are at the claim at any moment under load (2-3, up to 6,
at 32 clients in bench/webhook_load.py), and a claim's statement costs little
more for several runs than for one (the figures are where it is used). (Step
results in the workers were written this way too, and taken out: README,
"Benchmarks".)

If a write of several items fails with anything but an overload (a database or
Redis that cannot take it, which would fail each alone too), each item is
written again alone, so one item the database refuses fails only its own
caller; so is a write of any size that PostgreSQL rolled back to break a
deadlock or a serialization conflict. Items must be safe to write twice, as
claims are.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from kwala_site import overload

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Ticket(Generic[Item, Result]):
    __slots__ = ("item", "result", "error", "ready", "lead")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.result: Result | None = None
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self.lead = False  # set (with ready) when this ticket's thread is to write the next batch


class GroupCommit(Generic[Item, Result]):
    def __init__(self, write: Callable[[Sequence[Item]], list[Result]], *, limit: int,
                 observe: Callable[[int], None] = lambda size: None) -> None:
        """`write(items)` returns one result per item, in order; `observe(size)` sees each batch's size."""
        self._write = write
        self._limit = limit
        self._observe = observe
        self._lock = threading.Lock()
        self._waiting: list[_Ticket] = []
        self._writing = False

    def submit(self, item: Item) -> Result:
        """Write `item` with whatever else is waiting; its result, or its write's exception."""
        ticket: _Ticket[Item, Result] = _Ticket(item)
        with self._lock:
            self._waiting.append(ticket)
            lead = not self._writing
            self._writing = True
        if not lead:
            ticket.ready.wait()
        if lead or ticket.lead:
            self._write_batch()
        if ticket.error is not None:
            raise ticket.error
        return ticket.result  # type: ignore[return-value]

    def _write_batch(self) -> None:
        """Write the waiting items (this thread's first among them), then pass the lead on."""
        with self._lock:
            batch, self._waiting = self._waiting[:self._limit], self._waiting[self._limit:]
        try:
            self._settle(batch)
        finally:
            with self._lock:
                if self._waiting:
                    self._waiting[0].lead = True
                    self._waiting[0].ready.set()
                else:
                    self._writing = False
            for ticket in batch:
                ticket.ready.set()

    def _settle(self, batch: list[_Ticket]) -> None:
        try:
            self._observe(len(batch))
            results = self._write([t.item for t in batch])
        except BaseException as exc:
            # Rolled back by PostgreSQL (a deadlock, a serialization conflict): try again. Refused:
            # one item may be what failed it, so each alone, and only its caller fails. Overloaded:
            # each alone would fail too.
            again = isinstance(exc, Exception) and (
                overload.rolled_back(exc) or (len(batch) > 1 and not overload.is_overload(exc)))
            if not again:
                for ticket in batch:
                    ticket.error = exc
                return
            if overload.rolled_back(exc):
                logger.info("a write of %s item(s) was rolled back (%s); each is written again alone", len(batch),
                            type(exc).__name__)
            for ticket in batch:
                try:
                    (ticket.result,) = self._write([ticket.item])
                except Exception as alone:
                    ticket.error = alone
            return
        for ticket, result in zip(batch, results, strict=True):
            ticket.result = result
