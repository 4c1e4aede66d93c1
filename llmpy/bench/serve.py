"""`llmpy bench serve`: `llmpy serve` under 1, 4, 8 and 16 concurrent streaming clients, against `llmpy run`.

For random-weight models with the shapes of llama2.c's stories15M / 110M (and a tokenizer of as many
made-up pieces): the server runs as its own process (`llmpy serve --slots max(clients) --threads N`), the
clients stream one /v1/completions each of --tokens new tokens (--temperature 1, --top-p 0.9 by default, its
own seed). Random weights give near-uniform next-token distributions, whose top-p nucleus is most of the
vocabulary: sampling then costs ~0.3 ms per token and slot (a sort of ~29000 candidates), serial work between
forwards that a trained model's peaked distributions do not have; --top-p 1 (a plain multinomial draw) shows
the batching without it. Per concurrency level: aggregate tokens/s (all tokens / wall time from the first
request to the last [DONE]), time to first token (median), inter-token latency p50/p99 (gaps between streamed
chunks; a token whose piece prints nothing joins the next chunk).
Targets: 8 clients >= 4x the tokens/s of 1 client; one client's decode rate >= 90% of `llmpy run`'s, measured in this
same run through the same Transformer path (llmpy.llama.generate.generate on a Transformer of one stream, in this
process, while the server idles).
--soak-seconds S: then 16 clients request in a loop for S seconds; lost requests (an error, a missing
[DONE], fewer tokens than asked) and the server's resident memory at the start and the end.

The clients share the server's cores, so they are made cheap: one thread of this process reads every stream
from raw sockets (selectors; HTTP/1.1 chunks parsed by hand, each event's JSON decoded): ~40 us of CPU per
token where a thread per client through http.client took ~60 us (measured at 8 clients on stories15M; the rest
is the kernel's socket work). What is measured is unchanged: when each chunk arrives at a client. The server and
the `llmpy run` comparison run on the same fixed thread count, every core by default (--threads): the server's
thread governor would otherwise count the clients' process as load and might run one thread where run used two.
Before the levels, a warm-up request on every slot: a slot's first writes to its KV cache fault its pages in.
The machine's other load moves every figure: ratios from one run are what to read.
"""

import json
import re
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SHAPES = {  # name: (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len)
    "tiny": (32, 64, 2, 4, 2, 512, 256),  # for tests
    "15M": (288, 768, 6, 6, 6, 32000, 256),
    "110M": (768, 2048, 12, 12, 12, 32000, 1024),
}
PROMPT = "Once upon a time"
SOAK_CLIENTS = 16
STALL_S = 600.0  # a server that sends nothing for this long has lost the open streams


def add_arguments(parser):
    parser.add_argument("--models", default="15M,110M", help="comma-separated shapes among " + ",".join(SHAPES))
    parser.add_argument("--clients", default="1,4,8,16", help="comma-separated numbers of concurrent clients")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per request")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of every request")
    parser.add_argument("--top-p", dest="top_p", type=float, default=0.9, help="top-p of every request")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="threads of the server and of the llmpy run comparison (default: every core, fixed; "
                             "0: their thread governors choose, as by default outside the benchmark)")
    parser.add_argument("--soak-seconds", type=float, default=0.0,
                        help=f"then {SOAK_CLIENTS} clients in a loop for this long: lost requests, server memory")


def _write_model(d, name):
    """A random-weight llama2.c model of the shape and a tokenizer.bin of made-up pieces, in d."""
    import numpy as np

    from llmpy.formats.llama2c import write_llama2c
    from llmpy.llama.model import LlamaConfig, random_weights
    from llmpy.tokenizers.llama2 import Llama2Tokenizer

    config = LlamaConfig(*SHAPES[name])
    vocab = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [f"<0x{b:02X}>".encode() for b in range(256)]
    vocab += [bytes([c]) for c in range(32, 127)]
    vocab += [f" w{i}".encode() for i in range(config.vocab_size - len(vocab))]
    Llama2Tokenizer(vocab, [0.0] * len(vocab)).save(d / "tokenizer.bin")
    write_llama2c(d / "model.bin", config, random_weights(config, np.random.default_rng(0)), 0)
    return d / "model.bin"


def _run_rate(model, tokens, sampling, threads):
    """`llmpy run`'s decode tok/s: generate() on a one-stream Transformer (best of two, after a warm-up)."""
    from llmpy.llama.generate import generate
    from llmpy.llama.inference import Transformer
    from llmpy.sampler import Sampler
    from llmpy.tokenizers.llama2 import Llama2Tokenizer

    t = Transformer.from_file(model, threads=threads or None)
    tok = Llama2Tokenizer.load(model.with_name("tokenizer.bin"), t.config.vocab_size)
    steps = len(tok.encode(PROMPT)) + tokens - 1
    rates = [generate(t, tok, Sampler(t.config.vocab_size, *sampling, seed), PROMPT, steps).tok_per_s
             for seed in (1, 2, 3)]
    return max(rates[1:])


class _Stream:
    """One streamed /v1/completions on a raw socket: the request is sent at once, feed() parses what arrives
    (the status line, HTTP/1.1 chunks, one Server-Sent Event in each) and says when the response has ended."""

    def __init__(self, port, tokens, seed, sampling):
        body = json.dumps({"prompt": PROMPT, "max_tokens": tokens, "seed": seed, "temperature": sampling[0],
                           "top_p": sampling[1], "stream": True, "stream_options": {"include_usage": True}}).encode()
        self.tokens = tokens
        self.start = time.perf_counter()
        self.times = []  # arrival times of the chunks that carry text
        self.n = 0  # completion tokens (the usage chunk)
        self.done = False  # [DONE] came
        self.failed = False  # a non-200 status, an error event, or a broken connection
        self.finish = None
        self.buf = b""
        self.body = False  # past the headers
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=600)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.sock.setblocking(False)

    def feed(self, data, now):
        """Parse newly arrived bytes (b"" = the server closed the connection); True when the response is over."""
        if not data:
            self.failed = self.failed or not self.done
            return True
        self.buf += data
        if not self.body:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return False
            if not self.buf.startswith(b"HTTP/1.1 200"):
                self.failed = True
                return True
            self.buf, self.body = self.buf[end + 4:], True
        while True:  # chunks: size in hex, CRLF, data, CRLF
            eol = self.buf.find(b"\r\n")
            if eol < 0:
                return False
            size = int(self.buf[:eol], 16)
            if len(self.buf) < eol + size + 4:
                return False
            chunk, self.buf = self.buf[eol + 2:eol + 2 + size], self.buf[eol + size + 4:]
            if size == 0:  # the last chunk
                return True
            for event in chunk.split(b"\n\n"):
                if event.startswith(b"data: "):
                    self._event(event[6:], now)

    def _event(self, data, now):
        if data == b"[DONE]":
            self.done = True
            return
        event = json.loads(data)
        if "error" in event:
            self.failed = True
            return
        if event["choices"] and event["choices"][0]["text"]:
            self.times.append(now)
        if event["choices"] and event["choices"][0]["finish_reason"]:
            self.finish = event["choices"][0]["finish_reason"]
        if event.get("usage"):
            self.n = event["usage"]["completion_tokens"]

    def result(self):
        """(start time, [chunk arrival times], completion tokens, whether it ended well: [DONE] after a finish
        reason, and max_tokens tokens unless a stop token came first)."""
        ok = self.done and not self.failed and (self.finish == "stop" or (self.finish == "length" and
                                                                          self.n == self.tokens))
        return self.start, self.times, self.n, ok


def _clients(port, tokens, seeds, sampling, until=None):
    """Streams of one request per seed, all at once, read by this one thread (selectors); with until (a
    perf_counter time) each client sends its next request (seed + len(seeds)) when one ends, until then.
    Returns the results (_Stream.result) in the order the streams ended."""
    selector = selectors.DefaultSelector()
    results = []

    def launch(seed):
        try:
            stream = _Stream(port, tokens, seed, sampling)
        except OSError:
            results.append((time.perf_counter(), [], 0, False))
            return
        selector.register(stream.sock, selectors.EVENT_READ, (stream, seed))

    for seed in seeds:
        launch(seed)
    while selector.get_map():
        ready = selector.select(timeout=STALL_S)
        if not ready:  # the server stopped answering: every open stream is lost
            for key in list(selector.get_map().values()):
                key.data[0].failed = True
                results.append(key.data[0].result())
                selector.unregister(key.fileobj)
                key.fileobj.close()
            break
        for key, _ in ready:
            stream, seed = key.data
            try:
                data = stream.sock.recv(1 << 16)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if stream.feed(data, time.perf_counter()):
                selector.unregister(stream.sock)
                stream.sock.close()
                results.append(stream.result())
                if until is not None and time.perf_counter() < until:
                    launch(seed + len(seeds))
    selector.close()
    return results


def _percentile(values, q):
    import numpy as np

    return float(np.percentile(values, q)) if len(values) else float("nan")


def _level(port, n_clients, tokens, seed0, sampling):
    """n_clients concurrent streams: (aggregate tok/s, TTFT p50, ITL p50, ITL p99, one client's decode tok/s)."""
    results = sorted(_clients(port, tokens, [seed0 + i for i in range(n_clients)], sampling))  # by start time
    first = min(r[0] for r in results)
    last = max(r[1][-1] for r in results if r[1])
    total = sum(r[2] for r in results)
    ttft = [r[1][0] - r[0] for r in results if r[1]]
    gaps = [b - a for r in results for a, b in zip(r[1][:-1], r[1][1:])]
    _, times, n, _ = results[0]
    decode = (n - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else float("nan")
    return total / (last - first), _percentile(ttft, 50), _percentile(gaps, 50), _percentile(gaps, 99), decode


def _rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _soak(proc, port, tokens, seconds, sampling):
    rss_start = _rss_kib(proc.pid)
    results = _clients(port, tokens, [1000 + i for i in range(SOAK_CLIENTS)], sampling,
                       until=time.perf_counter() + seconds)
    return len(results), sum(not r[3] for r in results), rss_start, _rss_kib(proc.pid)


def _start_server(model, slots, threads):
    options = ["--threads", str(threads)] if threads else []
    proc = subprocess.Popen([sys.executable, "-m", "llmpy", "serve", str(model), "--port", "0", "--slots",
                             str(slots), *options], stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        m = re.search(r"on http://127\.0\.0\.1:(\d+)/", line)
        if m:  # from now on the server's messages go to ours (a full pipe would block the server)
            threading.Thread(target=lambda: [sys.stderr.write(x) for x in proc.stderr], daemon=True).start()
            return proc, int(m.group(1))
    raise RuntimeError(f"llmpy serve did not start (exit status {proc.wait()})")


def _all_cores():
    """The threads a fixed-thread run uses: Numba's maximum (every core this process may use)."""
    import numba

    return numba.config.NUMBA_NUM_THREADS


def run(args):
    from llmpy.errors import LlmpyError

    names = args.models.split(",")
    clients = [int(c) for c in args.clients.split(",")]
    if any(n not in SHAPES for n in names):
        raise LlmpyError(f"--models takes shapes among {', '.join(SHAPES)}, got {args.models}")
    if not clients or min(clients) < 1 or args.tokens < 2:
        raise LlmpyError("--clients must be numbers >= 1 and --tokens >= 2")
    sampling = (args.temperature, args.top_p)
    if args.threads is not None and args.threads < 0:
        raise LlmpyError(f"--threads must be >= 0 (0 = the thread governors choose), got {args.threads}")
    threads = _all_cores() if args.threads is None else args.threads
    status = 0
    for name in names:
        with tempfile.TemporaryDirectory() as d:
            model = _write_model(Path(d), name)
            run_rate = _run_rate(model, args.tokens, sampling, threads)
            slots = max(clients + ([SOAK_CLIENTS] if args.soak_seconds > 0 else []))
            proc, port = _start_server(model, slots, threads)
            try:
                # warm-up: every slot once, to the positions the levels use (the first writes to a slot's KV
                # cache fault its pages in: ~0.5 s of a 110M step, a one-time cost that would land in a level)
                _clients(port, args.tokens, [1 + i for i in range(slots)], sampling)
                print(f"{name}: {args.tokens} new tokens per request, {threads or 'governed'} threads; llmpy run "
                      f"decodes {run_rate:.1f} tok/s")
                print(f"{'clients':>8} {'tok/s':>9} {'TTFT p50':>10} {'ITL p50':>9} {'ITL p99':>9}")
                rates = {}
                for n in clients:
                    agg, ttft, itl50, itl99, decode = _level(port, n, args.tokens, 100 * n, sampling)
                    rates[n] = (agg, decode)
                    print(f"{n:>8} {agg:>9.1f} {ttft * 1e3:>8.1f}ms {itl50 * 1e3:>7.2f}ms {itl99 * 1e3:>7.2f}ms")
                if 1 in rates:
                    ratio = rates[1][1] / run_rate
                    print(f"  one client decodes {rates[1][1]:.1f} tok/s = {ratio:.2f}x llmpy run (target >= 0.90)")
                if 1 in rates and 8 in rates:
                    print(f"  8 clients: {rates[8][0] / rates[1][0]:.2f}x the tokens/s of 1 (target >= 4)")
                if args.soak_seconds > 0:
                    n_req, lost, rss0, rss1 = _soak(proc, port, args.tokens, args.soak_seconds, sampling)
                    print(f"  soak {args.soak_seconds:g}s, {SOAK_CLIENTS} clients: {n_req} requests, {lost} lost; "
                          f"server RSS {rss0 / 1024:.0f} MiB -> {rss1 / 1024:.0f} MiB")
                    status = status or int(lost > 0)
            finally:
                proc.terminate()
                code = proc.wait(timeout=60)
            if code != 0:
                print(f"  the server exited with status {code} after SIGTERM")
                status = 1
    return status
