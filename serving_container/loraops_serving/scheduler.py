"""The step-level scheduler: one worker thread owns the model; requests join the running batch and leave it at
decode-step boundaries.

Each loop: admit waiting requests (tokenize, check the context, take adapter slots) and prefill them, merge them
into the running batch, pick every row's next token with its own sampling and generator (greedy rows by one
argmax over the batch on its device), let finished, failed and cancelled rows leave, and run one
:meth:`Engine.decode_step` over the rest. The same loop drives either backend (``backends.py``: eager, or the
CUDA-graph step over a static cache whose rows are free the moment their request leaves). Every request ends
with exactly one ``done`` or ``error`` event; a failing forward fails the requests in it (500) and the loop goes
on; a cancelled request (its client left) leaves at the next step; :meth:`Scheduler.shutdown` fails everything in
flight (503) at once, even while a forward is stuck.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from loraops_serving.schema import BadRequest, RequestError
from loraops_serving.sequence import Generation, Row, Sequence, pick_tokens

log = logging.getLogger("loraops_serving")


class ServerError(RequestError):
    status = 500


class ShuttingDown(RequestError):
    status = 503


class Cancelled(RequestError):
    status = 499  # the client closed the request


Sink = Callable[[str, Any], None]


class Ticket:
    """One request in flight. ``sink(kind, payload)`` hears, from the worker thread: ``("admitted", None)``,
    ``("token", (input_index, text))``, then exactly one of ``("done", [Generation, ...])`` or
    ``("error", RequestError)``."""

    def __init__(self, rows: list[Row], sink: Sink | None = None) -> None:
        self.rows, self.sink = rows, sink
        self.results: list[Generation | None] = [None] * len(rows)
        self.cancelled = threading.Event()
        self.done = threading.Event()
        self.outcome: list[Generation] | RequestError | None = None
        self._lock = threading.Lock()

    def emit(self, kind: str, payload: Any = None) -> None:
        if self.sink is not None and not self.done.is_set():
            self.sink(kind, payload)

    def finish(self, outcome: list[Generation] | RequestError) -> None:
        with self._lock:
            if self.done.is_set():
                return
            self.outcome = outcome
            if self.sink is not None:
                self.sink("error" if isinstance(outcome, RequestError) else "done", outcome)
            self.done.set()

    def cancel(self) -> None:
        """The client left: the request leaves the batch at the next step boundary."""
        self.cancelled.set()

    def wait(self, timeout: float) -> list[Generation] | RequestError:
        if not self.done.wait(timeout):
            self.cancel()
            self.finish(ServerError(f"no answer within {timeout:.0f} s"))
        return self.outcome


class Scheduler:
    #: Prompt tokens prefilled in one step at most (a request alone may exceed it): the running rows wait for a
    #: step's prefill, so a burst of arrivals is spread over several steps instead of stalling the batch at once.
    max_prefill_tokens = 512

    def __init__(self, engine) -> None:
        self.engine = engine
        self.cond = threading.Condition()
        self.waiting: deque[Ticket] = deque()
        self.live: set[Ticket] = set()  # admitted, not finished
        self.running = None  # the backend's running batch | None, the worker's only
        self.rows_running = 0
        self.steps = 0  # decode steps run
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="loraops-scheduler", daemon=True)
        self.thread.start()

    # ----------------------------------------------------------------------------------- other threads
    def submit(self, rows: list[Row], sink: Sink | None = None) -> Ticket:
        ticket = Ticket(rows, sink)
        self.enqueue(ticket)
        return ticket

    def enqueue(self, ticket: Ticket) -> None:
        with self.cond:
            if not self.closed:
                self.waiting.append(ticket)
                self.cond.notify_all()
                return
        ticket.finish(ShuttingDown("the server is shutting down"))

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait (up to ``timeout`` s) until ``predicate()`` holds; it is checked after every step."""
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def idle(self) -> bool:
        return not self.waiting and not self.live and self.rows_running == 0

    def shutdown(self, message: str = "the server is shutting down") -> None:
        """Fail every waiting and running request now (503) and stop the worker after its current step."""
        with self.cond:
            self.closed = True
            tickets = [*self.waiting, *self.live]
            self.waiting.clear()
            self.cond.notify_all()
        for ticket in tickets:
            ticket.finish(ShuttingDown(message))

    # ---------------------------------------------------------------------------------- worker thread
    def _run(self) -> None:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.closed or self.waiting or self.running is not None)
                if self.closed:
                    return
                joining = self._take()
            try:
                self._step(joining)
            except Exception:  # a failed forward fails its requests, never the server
                log.exception("generation failed")
                self._fail_running(ServerError("generation failed; see the server log"))
            with self.cond:
                self.rows_running = len(self.running.seqs) if self.running is not None else 0
                self.live = {t for t in self.live if not t.done.is_set()}
                self.cond.notify_all()

    def _take(self) -> list[Ticket]:
        room = self.engine.settings.max_batch_size - (len(self.running.seqs) if self.running else 0)
        taken: list[Ticket] = []
        while self.waiting and (len(self.waiting[0].rows) <= room or (not taken and self.running is None)):
            ticket = self.waiting.popleft()
            if ticket.cancelled.is_set() or ticket.done.is_set():
                ticket.finish(Cancelled("the client left"))
                continue
            taken.append(ticket)
            room -= len(ticket.rows)
        return taken

    def _admit(self, tickets: list[Ticket]) -> list[Sequence]:
        engine, seqs, tokens = self.engine, [], 0
        for position, ticket in enumerate(tickets):
            mine: list[Sequence] = []
            try:
                for index, row in enumerate(ticket.rows):
                    ids = engine.encode(row)
                    slot = engine.acquire(row.adapter)
                    if slot is None:
                        break
                    mine.append(Sequence(row, ids, ticket, index, slot))
            except RequestError as failure:
                ticket.finish(failure)
            if len(mine) < len(ticket.rows):
                for seq in mine:
                    self._release(seq)
                if not ticket.done.is_set():
                    if self.running is None and not seqs:
                        ticket.finish(BadRequest("the request names more adapters than the server holds at once"))
                    else:
                        with self.cond:
                            self.waiting.appendleft(ticket)  # its adapters' slots are busy: next step
                continue
            cost = sum(len(seq.prompt_ids) for seq in mine)
            if seqs and tokens + cost > self.max_prefill_tokens:  # over this step's prefill: it and the rest wait
                for seq in mine:
                    self._release(seq)
                with self.cond:
                    self.waiting.extendleft(reversed(tickets[position:]))
                break
            tokens += cost
            with self.cond:
                self.live.add(ticket)
            ticket.emit("admitted")
            seqs.extend(mine)
        return seqs

    def _step(self, joining: list[Ticket]) -> None:
        engine = self.engine
        seqs = self._admit(joining)
        if seqs:
            try:
                self.running = engine.merge(self.running, engine.prefill(seqs))
            except Exception:
                log.exception("prefill failed")
                for seq in seqs:
                    self._release(seq)
                    seq.ticket.finish(ServerError("generation failed; see the server log"))
        if self.running is None:
            return
        batch, keep, tokens = self.running, [], []
        eos = engine.tokenizer.eos_token_id
        for seq in batch.seqs:
            if seq.ticket.cancelled.is_set():
                seq.ticket.finish(Cancelled("the client left"))
        going = [i for i, seq in enumerate(batch.seqs) if not seq.ticket.done.is_set()]
        logits = batch.logits if len(going) == len(batch.seqs) else batch.logits[going]
        picked = dict(zip(going, pick_tokens(logits, [batch.seqs[i] for i in going]))) if going else {}
        for i, seq in enumerate(batch.seqs):
            ticket = seq.ticket
            if i in picked:
                token = picked[i]
                piece = seq.advance(token, eos, engine.decode)
                if piece:
                    ticket.emit("token", (seq.index, piece))
                if seq.finish_reason is None:
                    keep.append(i)
                    tokens.append(token)
                    continue
                ticket.results[seq.index] = seq.result()
                if all(r is not None for r in ticket.results):
                    ticket.finish(list(ticket.results))
            self._release(seq)
        if not keep:
            batch.close()
            self.running = None
        elif len(keep) < len(batch.seqs):  # the others leave now (on the graph backend: their rows are free)
            self.running = batch.select(keep)
        if self.running is not None:
            self.running = engine.decode_step(self.running, tokens)
            self.steps += 1

    def _release(self, seq: Sequence) -> None:
        """Give ``seq``'s adapter slot back, once (a step that fails midway has released some of its rows)."""
        if not seq.released:
            seq.released = True
            self.engine.release(seq.row.adapter)

    def _fail_running(self, failure: RequestError) -> None:
        if self.running is not None:
            for seq in self.running.seqs:
                self._release(seq)
                seq.ticket.finish(failure)
            self.running.close()
        self.running = None
