"""Continuous batching: one engine thread owns the model and runs every request's tokens in shared forwards.

    engine = Engine(model, queue_size=64)     # model: a family object (model.py), one KV-cache stream per slot
    engine.start()
    req = Request(tokens, max_tokens=64, sampler=Sampler(V, 1.0, 0.9, seed), stop_ids={BOS}, stop=("\\n\\n",))
    engine.submit(req)                         # QueueFull when the queue is full (the server answers 503)
    while (event := req.events.get())[0] == "text": ...   # ("text", str) ..., then ("done", reason) or ("error", msg)

A request with a sink (http.Sink: a streamed reply's socket; http.Collected: a whole reply's text) has its text
given to sink.text(str) on the engine's thread instead of ("text", str) events: no thread to wake per token
(sink.text never blocks; it returns False when the client has gone, and the request is cancelled). The
("done" | "error", ...) event still ends it.

Each step is one forward of a row (last token, position, slot) for every slot that is decoding and the
prompts (or parts of prompts) of slots still prefilling, up to model.step_rows rows: kernels that compute
each row the same way whatever rows share the call. A prompt longer than step_rows is forwarded in chunks
of model.prefill_chunk rows, one chunk per step in a forward of its own after the shared one: the same
calls `llmpy run`'s prefill makes (BLAS sgemm, whose rounding differs from the fused kernels'), so the
prompt leaves the same bits in the KV cache. A long prompt thus does not stop the other slots, which get
their token every step. Each slot samples the logits of its last row with its own Sampler (its own seed
and coins; all the slots of a forward in one sampler.sample_rows call, which gives each the token its
Sampler.sample would), so a request's tokens do not depend on what else is running: the same prompt, seed and
parameters give the same text served alone, among others, or by `llmpy run` (with at most SMALL_BATCH
slots: more decode rows than that take the sgemm path too).

context_shift (`llmpy serve --context-shift`, `llmpy run --context-shift`'s meaning): a slot whose KV cache is
full keeps its first keep_for(prompt) tokens and the most recent half of the rest (llmpy.llama.generate's
keep_for and shift_window), forwards those again after the kept ones as it forwards a prompt (merged into the
shared forward, or in chunks), and goes on; without it a reply ends at the context with "length".

A request ends on a stop token (stop_ids), a stop string (the text before it is returned, the stop string
is not), or max_tokens; its slot is free for the next step. A request cancelled by its client (cancel(),
e.g. a closed connection) is dropped at the next step, queued or running. shutdown() ends every request
with an ("error", ...) event and stops the thread.

Not handled: prefix caching, preemption (a slot is held until its request ends), several choices per request.
"""

import codecs
import collections
import queue
import sys
import threading
import time
from dataclasses import dataclass, field

from llmpy.llama.generate import keep_for, shift_window
from llmpy.sampler import sample_rows

IDLE_WAIT_S = 0.5  # how long the idle engine sleeps before looking again (submit wakes it at once)


class QueueFull(Exception):
    """The engine's queue holds queue_size waiting requests already."""


class TextStream:
    """Bytes pieces -> text to send, with stop strings: text that could be the start of a stop string is held
    back until the next piece decides; UTF-8 split across pieces is joined (invalid bytes become U+FFFD)."""

    def __init__(self, stop=()):
        self.stop = tuple(stop)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending = ""  # decoded text not sent yet

    def feed(self, piece):
        """(text to send now, whether a stop string was found)."""
        self.pending += self.decoder.decode(piece)
        hits = [i for i in (self.pending.find(s) for s in self.stop) if i >= 0]
        if hits:
            text, self.pending = self.pending[:min(hits)], ""
            return text, True
        hold = 0  # the longest tail of pending that begins a stop string
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(s[:n]):
                    hold = n
                    break
        cut = len(self.pending) - hold
        text, self.pending = self.pending[:cut], self.pending[cut:]
        return text, False

    def flush(self):
        """The text held back, at the end of a reply not ended by a stop string."""
        text = self.pending + self.decoder.decode(b"", final=True)
        self.pending = ""
        return text


@dataclass(eq=False)
class Request:
    tokens: list  # the prompt's token ids, BOS included
    max_tokens: int  # new tokens at most
    sampler: object  # llmpy.sampler.Sampler: its seed and coins are this request's own
    stop_ids: frozenset  # sampled tokens that end the reply (not part of it)
    stop: tuple = ()  # stop strings
    chat: bool = False  # a chat reply (decoded on its own) or a completion (continuing the prompt's text)
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    sink: object = None  # http.Sink or http.Collected: the text goes to sink.text, not to events
    cancelled: bool = False
    n_generated: int = 0  # tokens of the reply (a stop token not counted)
    submitted: float = field(default_factory=time.perf_counter)

    def cancel(self):
        """Called from the client's thread: the engine drops the request at its next step."""
        self.cancelled = True


class Slot:
    """A request in one KV-cache stream: `feed` (the prompt, or after a context shift the window's tail) is
    forwarded from position `base` up to `done` tokens, then the slot decodes at `pos`."""

    def __init__(self, index, request, decoder, keep):
        self.index = index
        self.request = request
        self.feed = request.tokens  # tokens to forward at positions base, base + 1, ... before the next sample
        self.base = 0
        self.done = 0  # feed tokens forwarded
        self.cache = []  # the tokens whose keys and values this slot's KV cache holds (positions 0..len - 1)
        self.keep = keep  # tokens a context shift keeps from the start (keep_for the prompt)
        self.last = None  # the token to forward next (decoding)
        self.text = TextStream(request.stop)
        self.decoder = decoder  # the model's: sampled token -> bytes

    @property
    def decoding(self):
        return self.done == len(self.feed)

    @property
    def pos(self):
        """The position of the next token: tokens in the KV cache."""
        return len(self.cache)

    def shift(self, ctx):
        """The KV cache is full and `last` is to be forwarded: keep the first `keep` tokens and the most recent
        half of the rest (`llmpy run --context-shift`'s window), and forward the rest again after the kept ones."""
        window = shift_window(self.cache + [self.last], self.keep, ctx)
        self.cache = window[:self.keep]  # their keys and values stay valid
        self.feed, self.base, self.done = window[self.keep:], self.keep, 0


class Engine:
    """The thread that owns the model: a queue of requests, model.n_slots slots, one forward per step."""

    def __init__(self, model, queue_size=64, context_shift=False):
        self.model = model
        self.queue_size = queue_size
        self.context_shift = context_shift
        self.waiting = collections.deque()
        self.slots = [None] * model.n_slots
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.stopping = False
        self.outbox = []  # (request, text or None, event or None) of this forward, delivered after its sampling
        self.thread = threading.Thread(target=self._loop, name="llmpy-engine", daemon=True)
        self.steps = 0  # forwards run (tests and the benchmark read it)

    def start(self):
        self.thread.start()
        return self

    def alive(self):
        return self.thread.is_alive() and not self.stopping

    def counts(self):
        """(active slots, queued requests)."""
        with self.lock:
            return sum(s is not None for s in self.slots), len(self.waiting)

    def submit(self, request):
        with self.lock:
            if self.stopping:
                raise QueueFull("the server is shutting down")
            free = sum(s is None for s in self.slots)  # a request for a free slot waits only until the next step
            if len(self.waiting) >= self.queue_size + free:
                raise QueueFull(f"{len(self.waiting)} requests are waiting already (--queue {self.queue_size})")
            self.waiting.append(request)
            self.wake.notify()

    def shutdown(self, timeout=10.0):
        """End every queued and running request with an error event, then stop the thread."""
        with self.lock:
            self.stopping = True
            self.wake.notify()
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout)

    # -------------------------------------------------------------------------
    # the engine thread

    def _loop(self):
        while not self.stopping:
            try:
                with self.lock:
                    self._admit()
                    if all(s is None for s in self.slots):
                        self.wake.wait(IDLE_WAIT_S)
                        continue
                self._step()
            except Exception as e:  # noqa: BLE001 -- a failed step ends the requests it carried, not the server
                print(f"llmpy serve: engine step failed: {e!r}", file=sys.stderr)
                for slot in self.slots:
                    if slot is not None:
                        self._finish(slot, "error", f"the model failed: {e}")
                self._deliver()
        with self.lock:
            ended = [s.request for s in self.slots if s is not None] + list(self.waiting)
            self.slots = [None] * len(self.slots)
            self.waiting.clear()
        for request in ended:
            request.events.put(("error", "the server is shutting down"))

    def _admit(self):
        """Move waiting requests into free slots (lock held); drop the cancelled ones."""
        for i, slot in enumerate(self.slots):
            if slot is not None and slot.request.cancelled:
                self.slots[i] = None
        self.waiting = collections.deque(r for r in self.waiting if not r.cancelled)
        for i in range(len(self.slots)):
            if self.slots[i] is None and self.waiting:
                request = self.waiting.popleft()
                self.slots[i] = Slot(i, request, self.model.text_decoder(request.tokens, request.chat),
                                     keep_for(len(request.tokens), self.model.ctx))

    def _step(self):
        """A forward of a row for every decoding slot and the feeds (prompts) that fit in step_rows rows; then one
        chunk of a longer feed in a forward of its own; each slot that has forwarded its last token samples."""
        active = [s for s in self.slots if s is not None]
        for slot in active:
            if slot.decoding and slot.pos >= self.model.ctx:  # only with context_shift (else it ended)
                slot.shift(self.model.ctx)
        prefilling = sorted((s for s in active if not s.decoding), key=lambda s: s.request.submitted)
        rows = [(slot, [slot.last], slot.pos, 1) for slot in active if slot.decoding]  # (slot, tokens, start, n)
        budget = self.model.step_rows - len(rows)  # >= the slots prefilling (step_rows >= n_slots)
        for slot in prefilling:
            n = min(budget, len(slot.feed) - slot.done)
            if len(slot.feed) <= self.model.step_rows and n > 0:
                rows.append((slot, slot.feed[slot.done:slot.done + n], slot.base + slot.done, n))
                budget -= n
        if rows:
            self._forward(rows)
        long = [s for s in prefilling if len(s.feed) > self.model.step_rows]
        if long:  # `llmpy run`'s prefill chunks (Transformer.prefill): the same forward calls, the same bits
            slot = long[0]
            n = min(self.model.prefill_chunk, len(slot.feed) - slot.done)
            self._forward([(slot, slot.feed[slot.done:slot.done + n], slot.base + slot.done, n)])

    def _forward(self, rows):
        """rows: (slot, its tokens, first position, count), one entry per slot."""
        tokens, positions, streams = [], [], []
        for slot, toks, start, n in rows:
            tokens += toks
            positions += range(start, start + n)
            streams += [slot.index] * n
        logits = self.model.forward(tokens, positions, streams)  # (distinct slots, V): valid until the next forward
        self.steps += 1
        ready = []  # (row of logits, slot) of the slots that sample now
        for row, (slot, toks, _, n) in enumerate(rows):
            if slot.decoding:  # the decode row just forwarded
                slot.cache.append(slot.last)
            else:
                slot.done += n
                slot.cache += toks
                if not slot.decoding:
                    continue  # more of the feed to come
            ready.append((row, slot))
        if ready:
            picked = [row for row, _ in ready]
            sampled = sample_rows([slot.request.sampler for _, slot in ready],
                                  logits[:len(picked)] if picked[-1] == len(picked) - 1 else logits[picked])
            for (_, slot), token in zip(ready, sampled):
                self._accept(slot, token)
            self._deliver()

    def _accept(self, slot, token):
        """A sampled token: the end of the reply, or a piece of text (and the next row to forward)."""
        request = slot.request
        if token in request.stop_ids:
            return self._finish(slot, "stop")
        request.n_generated += 1
        text, stopped = slot.text.feed(slot.decoder.push(token))
        if text:
            self._emit(request, text)
        slot.last = token
        if stopped:
            return self._finish(slot, "stop", flush=False)
        if request.n_generated >= request.max_tokens or (slot.pos >= self.model.ctx and not self.context_shift):
            return self._finish(slot, "length")

    def _emit(self, request, text):
        self.outbox.append((request, text, None))

    def _deliver(self):
        """Hand this forward's text and ends to the requests, all in a row after the sampling and bookkeeping:
        the clients' chunks leave within microseconds of each other (a client reading several streams wakes once
        per step, not once per stream); a request's end comes after its text."""
        for request, text, event in self.outbox:
            if event is not None:
                request.events.put(event)
            elif request.sink is None:
                request.events.put(("text", text))
            elif not request.sink.text(text):
                request.cancel()  # the client has gone: the slot is freed at the next step
        self.outbox.clear()

    def _finish(self, slot, reason, message=None, flush=True):
        if flush and reason != "error":
            text = slot.text.feed(slot.decoder.finish())[0] + slot.text.flush()
            if text:
                self._emit(slot.request, text)
        self.outbox.append((slot.request, None, ("error", message) if reason == "error" else ("done", reason)))
        with self.lock:
            self.slots[slot.index] = None
