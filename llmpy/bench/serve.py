"""`llmpy bench serve`: `llmpy serve` under 1, 4, 8 and 16 concurrent streaming clients, against `llmpy run`.

For random-weight models with the shapes of llama2.c's stories15M / 110M (and a tokenizer of as many
made-up pieces): the server runs as its own process (`llmpy serve --slots max(clients)`), the clients are
threads of this process, each streaming one /v1/completions of --tokens new tokens (--temperature 1,
--top-p 0.9 by default, its own seed). Random weights give near-uniform next-token distributions, whose
top-p nucleus is most of the vocabulary: sampling then costs ~0.5 ms per token and slot (a sort of ~29000
candidates), serial work between forwards that a trained model's peaked distributions do not have;
--top-p 1 (a plain multinomial draw) shows the batching without it. Per concurrency level: aggregate
tokens/s (all tokens / wall time from the first request to the last [DONE]), time to first token (median),
inter-token latency p50/p99 (gaps between streamed chunks; a token whose piece prints nothing joins the next chunk).
Targets: 8 clients >= 4x the tokens/s of 1 client; one client's decode rate >= 90% of `llmpy run`'s, measured in this
same run through the same Transformer path (llmpy.llama.generate.generate on a Transformer of one stream, in this
process, while the server idles).
--soak-seconds S: then 16 clients request in a loop for S seconds; lost requests (an error, a missing
[DONE], fewer tokens than asked) and the server's resident memory at the start and the end.

The machine's other load moves every figure: ratios from one run are what to read.
"""

import http.client
import json
import re
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


def add_arguments(parser):
    parser.add_argument("--models", default="15M,110M", help="comma-separated shapes among " + ",".join(SHAPES))
    parser.add_argument("--clients", default="1,4,8,16", help="comma-separated numbers of concurrent clients")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per request")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of every request")
    parser.add_argument("--top-p", dest="top_p", type=float, default=0.9, help="top-p of every request")
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


def _run_rate(model, tokens, sampling):
    """`llmpy run`'s decode tok/s: generate() on a one-stream Transformer (best of two, after a warm-up)."""
    from llmpy.llama.generate import generate
    from llmpy.llama.inference import Transformer
    from llmpy.sampler import Sampler
    from llmpy.tokenizers.llama2 import Llama2Tokenizer

    t = Transformer.from_file(model)
    tok = Llama2Tokenizer.load(model.with_name("tokenizer.bin"), t.config.vocab_size)
    steps = len(tok.encode(PROMPT)) + tokens - 1
    rates = [generate(t, tok, Sampler(t.config.vocab_size, *sampling, seed), PROMPT, steps).tok_per_s
             for seed in (1, 2, 3)]
    return max(rates[1:])


def _stream(port, tokens, seed, sampling=(1.0, 0.9)):
    """One streamed completion: (start time, [chunk arrival times], completion tokens, whether it ended well:
    [DONE] after a finish reason, and max_tokens tokens unless a stop token came first)."""
    body = json.dumps({"prompt": PROMPT, "max_tokens": tokens, "seed": seed, "temperature": sampling[0],
                       "top_p": sampling[1],
                       "stream": True, "stream_options": {"include_usage": True}}).encode()  # sent with the headers
    start, times, n, done, finish = time.perf_counter(), [], 0, False, None
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        while resp.status == 200:
            line = resp.readline()
            if not line:
                break
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                done = True
                resp.read()  # the end of the chunked body: the connection closes cleanly
                break
            event = json.loads(data)
            if "error" in event:
                break
            if event["choices"] and event["choices"][0]["text"]:
                times.append(time.perf_counter())
            if event["choices"] and event["choices"][0]["finish_reason"]:
                finish = event["choices"][0]["finish_reason"]
            if event.get("usage"):
                n = event["usage"]["completion_tokens"]
        conn.close()
    except OSError:
        pass
    return start, times, n, done and (finish == "stop" or (finish == "length" and n == tokens))


def _percentile(values, q):
    import numpy as np

    return float(np.percentile(values, q)) if len(values) else float("nan")


def _level(port, n_clients, tokens, seed0, sampling):
    """n_clients concurrent streams: (aggregate tok/s, TTFT p50, ITL p50, ITL p99, one client's decode tok/s)."""
    results = [None] * n_clients

    def client(i):
        results[i] = _stream(port, tokens, seed0 + i, sampling)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first = min(r[0] for r in results)
    last = max(r[1][-1] for r in results if r[1])
    total = sum(r[2] for r in results)
    ttft = [r[1][0] - r[0] for r in results if r[1]]
    gaps = [b - a for r in results for a, b in zip(r[1][:-1], r[1][1:])]
    _, times, n, _ = results[0]
    decode = (n - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")
    return total / (last - first), _percentile(ttft, 50), _percentile(gaps, 50), _percentile(gaps, 99), decode


def _rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _soak(proc, port, tokens, seconds, sampling):
    counts = {"requests": 0, "lost": 0}
    lock = threading.Lock()
    rss_start = _rss_kib(proc.pid)
    end = time.perf_counter() + seconds

    def client(i):
        seed = 1000 + i
        while time.perf_counter() < end:
            ok = _stream(port, tokens, seed, sampling)[3]
            with lock:
                counts["requests"] += 1
                counts["lost"] += not ok
            seed += SOAK_CLIENTS

    threads = [threading.Thread(target=client, args=(i,)) for i in range(SOAK_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts["requests"], counts["lost"], rss_start, _rss_kib(proc.pid)


def _start_server(model, slots):
    proc = subprocess.Popen([sys.executable, "-m", "llmpy", "serve", str(model), "--port", "0", "--slots",
                             str(slots)], stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        m = re.search(r"on http://127\.0\.0\.1:(\d+)/", line)
        if m:  # from now on the server's messages go to ours (a full pipe would block the server)
            threading.Thread(target=lambda: [sys.stderr.write(x) for x in proc.stderr], daemon=True).start()
            return proc, int(m.group(1))
    raise RuntimeError(f"llmpy serve did not start (exit status {proc.wait()})")


def run(args):
    from llmpy.errors import LlmpyError

    names = args.models.split(",")
    clients = [int(c) for c in args.clients.split(",")]
    if any(n not in SHAPES for n in names):
        raise LlmpyError(f"--models takes shapes among {', '.join(SHAPES)}, got {args.models}")
    if not clients or min(clients) < 1 or args.tokens < 2:
        raise LlmpyError("--clients must be numbers >= 1 and --tokens >= 2")
    sampling = (args.temperature, args.top_p)
    status = 0
    for name in names:
        with tempfile.TemporaryDirectory() as d:
            model = _write_model(Path(d), name)
            run_rate = _run_rate(model, args.tokens, sampling)
            proc, port = _start_server(model, max(clients + ([SOAK_CLIENTS] if args.soak_seconds > 0 else [])))
            try:
                _stream(port, args.tokens, 1, sampling)  # warm-up
                print(f"{name}: {args.tokens} new tokens per request; llmpy run decodes {run_rate:.1f} tok/s")
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
