"""The HTTP layer of `llmpy serve`: the standard library's ThreadingHTTPServer, one thread per connection.

Why the standard library (mlx-lm's server does the same) rather than starlette + uvicorn (vLLM's): no
dependency, and it measured faster here. On the 2-core box, shared with other jobs (load ~2.5, so rough),
server and http.client in one process, two runs each (uvicorn 0.55, starlette 1.10, Python 3.11):
    GET /health, 1 keep-alive client:    stdlib 6,900-10,600 req/s   uvicorn+starlette 3,000-5,200 req/s
    GET /health, 8 keep-alive clients:   stdlib 10,100-10,600 req/s  uvicorn+starlette 3,300-4,900 req/s
    an SSE stream of 1000 events:        stdlib 9-10 ms, first event 0.7-3.6 ms;
                                         uvicorn+starlette 58-69 ms, first event 42-45 ms
Either is far faster than the engine, which makes one token per slot per forward (milliseconds to tens of
milliseconds on a CPU); a thread per connection costs a thread stack per client, fine at tens of clients.
What it must do, it does: a stream is written chunk by chunk to the unbuffered socket (wbufsize 0,
TCP_NODELAY) as the engine produces text; a closed connection is found when a write fails or, while the
client waits, when its socket reads end-of-file (polled every POLL_S), and the request is cancelled.
A stream's text chunks are sent by the engine's thread itself (Sink: a send that does not block, the chunk's
JSON from a template), and a whole reply's text is collected by it (Collected), not handed to the connection's
thread token by token: waking that thread for every token cost ~40-70 us of CPU per token on this box (futex
wake-ups and GIL hand-overs), as much as the rest of a token's serving. What a slow client's socket does not
take at once is left to its connection's thread to send.

Endpoints: GET / (the chat page), GET /health, GET /v1/models, POST /v1/completions, POST
/v1/chat/completions. Bodies need a Content-Length of at most MAX_BODY_BYTES: a larger one is refused
(413) before a byte of it is read. Streams use HTTP/1.1 chunked transfer encoding, so connections stay
reusable. Every error is OpenAI's {"error": {...}} body.
"""

import json
import queue
import select
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from llmpy.serve import api
from llmpy.serve.engine import QueueFull

MAX_BODY_BYTES = 8 * 1024 * 1024  # a request body larger than this is refused unread
POLL_S = 0.05  # how often a waiting handler checks whether its client is still there
STOP_GRACE_S = 5.0  # on shutdown, how long the last events of the streams may take to be written
POST_PATHS = ("/v1/completions", "/v1/chat/completions")
GET_PATHS = ("/", "/index.html", "/health", "/v1/models")
CHAT_PAGE = Path(__file__).with_name("static") / "chat.html"


class Server(ThreadingHTTPServer):
    """The server: the model (for names and encoding) and the engine; tracks its connections for shutdown."""

    daemon_threads = False  # server_close() joins the handler threads: none is left behind
    request_queue_size = 128  # listen backlog (socketserver's 5 dropped connections when 16 clients came at once)
    block_on_close = True

    def __init__(self, address, model, engine):
        self.model = model
        self.engine = engine
        self.created = int(time.time())
        self.connections = set()
        self.connections_lock = threading.Lock()
        self.stopping = False
        self.serving = False
        super().__init__(address, Handler)

    def serve_forever(self, poll_interval=0.1):
        self.serving = True
        super().serve_forever(poll_interval)

    def handle_error(self, request, client_address):
        """A client that went away (reset, broken pipe) is not the server's error: no traceback for it."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def process_request(self, request, client_address):
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def stop(self):
        """Stop accepting, end every request (engine.shutdown sends each an error), wake idle keep-alive
        connections (their reads end), and join every handler thread."""
        self.stopping = True
        self.engine.shutdown()
        if self.serving:
            self.shutdown()  # serve_forever returns (shutdown() would wait forever if it never ran)
        self._shutdown_connections(socket.SHUT_RD)  # a handler blocked reading the next request sees end-of-file
        end = time.monotonic() + STOP_GRACE_S
        while self.connections and time.monotonic() < end:  # the streams write their last events
            time.sleep(0.02)
        self._shutdown_connections(socket.SHUT_RDWR)  # a client that stopped reading cannot hold a write forever
        self.server_close()

    def _shutdown_connections(self, how):
        with self.connections_lock:
            for conn in list(self.connections):
                try:
                    conn.shutdown(how)
                except OSError:
                    pass


class ClientGone(Exception):
    pass


def sse_chunk(payload):
    """One Server-Sent Event as one HTTP/1.1 chunk."""
    data = b"data: " + payload + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


class Collected:
    """A whole (non-streamed) reply's text, collected by the engine's thread (its handler waits for the end)."""

    def __init__(self):
        self.parts = []

    def text(self, text):
        self.parts.append(text)
        return True


class Sink:
    """A streamed reply's text chunks, sent from the engine's thread: text() sends one chunk with MSG_DONTWAIT
    (it never blocks the engine); what the socket does not take then, or what comes before the handler has sent
    the headers (open()), waits in `pending`, and the handler's thread sends it (flush(), blocking), woken by
    one ("flush", None) event. The chunks leave in order: while bytes are pending, new ones queue behind them."""

    def __init__(self, connection, template, events):
        self.connection = connection
        self.prefix, self.suffix = template  # api.text_chunk_template
        self.events = events
        self.lock = threading.Lock()
        self.pending = b""
        self.opened = False  # the headers are sent: the engine may send
        self.flushing = False  # a ("flush", None) event is queued, or the handler is sending pending
        self.broken = False  # a send failed: the client has gone

    def text(self, text):
        """The engine's thread: send text as a chunk, or leave it pending; False when the client has gone."""
        data = sse_chunk(self.prefix + json.dumps(text).encode() + self.suffix)
        with self.lock:
            if self.broken:
                return False
            if self.opened and not self.flushing:
                try:
                    data = data[self.connection.send(data, socket.MSG_DONTWAIT):]
                except BlockingIOError:
                    pass
                except OSError:  # BrokenPipeError, ConnectionResetError
                    self.broken = True
                    return False
                if not data:
                    return True
                self.flushing = True
                self.events.put(("flush", None))
            self.pending += data
            return True

    def open(self):
        """The handler's thread, once the headers are sent: from now on the engine sends; what came before, the
        handler sends now."""
        with self.lock:
            self.opened = True
            self.flushing = True
        self.flush()

    def flush(self):
        """The handler's thread: send what is pending (blocking) until nothing is; ClientGone if the client left."""
        while True:
            with self.lock:
                data, self.pending = self.pending, b""
                if not data or self.broken:
                    self.flushing = False
                    if self.broken:
                        raise ClientGone()
                    return
            try:
                self.connection.sendall(data)
            except OSError:
                with self.lock:
                    self.broken = True
                    self.flushing = False
                raise ClientGone() from None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # each stream chunk leaves at once
    server_version = "llmpy"

    checked = 0.0  # when _client_gone last looked (time.monotonic)

    def log_message(self, format, *args):  # quiet: one line per request would drown the server's own messages
        pass

    # -------------------------------------------------------------------------
    # writing

    def _send(self, status, body, content_type="application/json", headers=()):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        if self.server.stopping:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _error(self, e, close=False):
        if close:
            self.close_connection = True
        self._send(e.status, e.body(), headers=[("Connection", "close")] if close else ())

    def _write_chunk(self, payload):
        """One Server-Sent Event as one HTTP chunk; ClientGone when the connection is closed."""
        try:
            self.wfile.write(sse_chunk(payload if isinstance(payload, bytes) else json.dumps(payload).encode()))
        except OSError:  # BrokenPipeError, ConnectionResetError
            raise ClientGone() from None

    def _client_gone(self):
        """Whether the client closed its connection (its socket reads end-of-file) while we were busy."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _next_event(self, request):
        """The engine's next event for request; ClientGone (and the request cancelled) if the client leaves:
        checked every POLL_S, also while events keep coming (a reply that is not streamed writes nothing)."""
        while True:
            now = time.monotonic()
            if now - self.checked >= POLL_S:
                self.checked = now
                if self._client_gone():
                    request.cancel()
                    raise ClientGone()
            try:
                return request.events.get(timeout=POLL_S)
            except queue.Empty:
                pass

    # -------------------------------------------------------------------------
    # endpoints

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/health":
            active, queued = self.server.engine.counts()
            ok = self.server.engine.alive()
            self._send(200 if ok else 503, {"status": "ok" if ok else "stopped", "slots": len(
                self.server.engine.slots), "active": active, "queued": queued})
        elif path == "/v1/models":
            self._send(200, api.models_list(self.server.model.name, self.server.created))
        elif path in ("/", "/index.html"):
            self._send(200, CHAT_PAGE.read_bytes(), "text/html; charset=utf-8")
        elif path in POST_PATHS:
            self._error(api.ApiError(405, f"{path} takes POST, not GET", code="method_not_allowed"))
        else:
            self._error(api.ApiError(404, f"no such endpoint: GET {path}", code="not_found"))

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        if path not in POST_PATHS:
            if path in GET_PATHS:
                return self._error(api.ApiError(405, f"{path} takes GET, not POST", code="method_not_allowed"),
                                   close=True)
            return self._error(api.ApiError(404, f"no such endpoint: POST {path}", code="not_found"), close=True)
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            return self._error(api.ApiError(411, "a Content-Length header is required"), close=True)
        if int(length) > MAX_BODY_BYTES:  # refused before reading it
            return self._error(api.ApiError(413, f"the body is {int(length)} bytes; at most {MAX_BODY_BYTES} are "
                                                 "accepted", code="body_too_large"), close=True)
        raw = self.rfile.read(int(length))
        try:
            call = api.parse_call(api.parse_json(raw), self.server.model, chat=path.endswith("chat/completions"),
                                  context_shift=self.server.engine.context_shift)
            if call.stream:
                template = api.text_chunk_template(call, self.server.model.name)
                call.request.sink = Sink(self.connection, template, call.request.events)
            else:
                call.request.sink = Collected()
            self.server.engine.submit(call.request)
        except api.ApiError as e:
            return self._error(e)
        except QueueFull as e:
            return self._error(api.ApiError(503, f"the server is busy: {e}; try again later", code="queue_full",
                                            kind="server_error"))
        try:
            if call.stream:
                self._stream(call)
            else:
                self._whole(call)
        except ClientGone:
            call.request.cancel()
            self.close_connection = True

    def _whole(self, call):
        while True:
            event = self._next_event(call.request)
            if event[0] == "done":
                text = "".join(call.request.sink.parts)
                return self._send(200, api.reply(call, self.server.model.name, text, event[1]))
            if event[0] == "error":  # the server is stopping (503), or the model failed (500)
                status = 503 if self.server.stopping else 500
                return self._error(api.ApiError(status, event[1], code="aborted", kind="server_error"))

    def _stream(self, call):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        name = self.server.model.name
        if call.chat:
            self._write_chunk(api.chunk(call, name, role=True))
        sink = call.request.sink  # the engine sends the text chunks
        sink.open()
        while True:
            event = self._next_event(call.request)
            sink.flush()  # what the socket did not take at once, before anything else
            if event[0] == "flush":
                continue
            if event[0] == "done":
                self._write_chunk(api.chunk(call, name, finish_reason=event[1]))
                if call.include_usage:
                    self._write_chunk(api.chunk(call, name, with_usage=True))
            else:  # the server is stopping: say so in the stream, then end it
                self._write_chunk(api.ApiError(503, event[1], code="aborted", kind="server_error").body())
            self._write_chunk(b"[DONE]")
            try:
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                raise ClientGone() from None
            if self.server.stopping:
                self.close_connection = True
            return


def make_server(host, port, model, engine):
    """Bind host:port (an OSError if taken) and return the Server (not yet serving)."""
    return Server((host, port), model, engine)
