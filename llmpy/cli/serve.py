"""`llmpy serve MODEL`: an OpenAI-compatible HTTP server with continuous batching (llmpy/serve/).

    llmpy serve stories15M                                # http://127.0.0.1:8000/ : a chat page
    llmpy serve stories110M.bin --slots 8 --ctx 512 --port 8080
    curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
        -d '{"prompt": "Once upon a time", "max_tokens": 64, "seed": 42}'

MODEL is anything `llmpy run` takes, with the same options, loaded by the same loader (llmpy.cli.run.load_model):
a llama2.c file or stories15M | stories42M | stories110M (tokenizer: -z, else found as `llmpy run` finds it), or
a Hugging Face Llama directory or hub id (its tokenizer.json, chat template and eos ids); --quantize q8, --dtype
bf16, --threads N and --allow-nonfinite as for `llmpy run`, so a request gives the text `llmpy run` gives with
the same options, prompt and seed. --slots requests run at once (one KV cache each), --queue more wait for a
slot (beyond that: 503), --context (--ctx) sets the positions of each slot's KV cache. A request whose prompt and
max_tokens do not fit the context is refused with 400 context_length_exceeded, and one without max_tokens ends at
the context with finish_reason "length"; with --context-shift, `llmpy run --context-shift`'s rule: a reply that
fills its slot's context keeps the prompt (at most half the window) and the most recent half of the rest and goes
on, up to any max_tokens (without max_tokens it still ends where the context does).
SIGINT or SIGTERM ends the active requests (each gets an error event), joins every thread, and exits 0.
"""

import errno
import signal
import socket
import sys
import threading

from llmpy.errors import LlmpyError


def add_arguments(parser):
    from llmpy.cli.run import add_model_arguments

    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (0 = any free port)")
    parser.add_argument("--slots", type=int, default=4, help="requests generated at once (continuous batching)")
    parser.add_argument("--queue", type=int, default=64, help="requests that may wait for a slot (then 503)")
    parser.add_argument("--context-shift", action="store_true",
                        help="past the context, keep the prompt (at most half the window) and the most recent half "
                             "of the rest, and go on (default: the reply ends with finish_reason length)")


def start(model_args, host="127.0.0.1", port=8000, slots=4, queue=64, context_shift=False):
    """Load the model (model_args: add_model_arguments' options, e.g. llmpy.cli.run.model_options(path)), start
    the engine and bind the server; returns the Server (call serve_forever)."""
    from llmpy.llama.inference import tune_openmp_waiting
    from llmpy.serve.engine import Engine
    from llmpy.serve.http import make_server
    from llmpy.serve.model import load_served

    if slots < 1:
        raise LlmpyError(f"--slots must be >= 1, got {slots}")
    if queue < 0:
        raise LlmpyError(f"--queue must be >= 0, got {queue}")
    if not 0 <= port <= 65535:
        raise LlmpyError(f"--port must be in [0, 65535], got {port}")
    tune_openmp_waiting()
    model = load_served(model_args, slots)
    engine = Engine(model, queue, context_shift)
    try:
        server = make_server(host, port, model, engine)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise LlmpyError(f"port {port} on {host} is in use by another program: choose another with --port "
                             "(or stop the other server)") from None
        if e.errno in (errno.EADDRNOTAVAIL, errno.EACCES) or isinstance(e, socket.gaierror):
            raise LlmpyError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        raise
    engine.start()
    return server


def run(args):
    server = start(args, args.host, args.port, args.slots, args.queue, args.context_shift)
    host, port = server.server_address[:2]
    model = server.model
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="llmpy-http")
    thread.start()
    print(f"llmpy serve: {model.name} on http://{host}:{port}/ ({model.n_slots} slots, context {model.ctx})",
          file=sys.stderr, flush=True)
    try:
        while not stop.wait(0.5):  # the main thread only waits for a signal
            if not thread.is_alive():
                break
    finally:
        server.stop()
        thread.join()
        for s, handler in previous.items():
            signal.signal(s, handler)
    print("llmpy serve: stopped", file=sys.stderr, flush=True)
    return 0
