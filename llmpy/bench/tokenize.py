"""`llmpy bench tokenize`: GPT-2 tokenization throughput of the data pipeline next to plain tiktoken.

The text is the offline default corpus (pydoc_data topics) repeated to --mb megabytes, one document per
topic. Four timings in one run, best of --repeat:
    tiktoken, 1 process        enc.encode_ordinary(doc) for every document
    pipeline, 1 process        llmpy.data.prepro.encode_documents: [EOT] + tokens as uint16 arrays
    tiktoken, all cores        enc.encode_ordinary_batch(docs, num_threads=N)
    pipeline, all cores        encode_documents with a pool of N processes (what prepro uses)
The tokenizer is loaded once, outside the timings (the pool's workers inherit it by fork); the process
pool's start-up is inside. The ratios say what the pipeline costs on top of tiktoken.
"""

import os
import time


def add_arguments(parser):
    parser.add_argument("--mb", type=float, default=8.0, help="megabytes of text to tokenize (default 8)")
    parser.add_argument("--workers", type=int, default=None, help="processes/threads for 'all cores' (default all)")
    parser.add_argument("--repeat", type=int, default=2, help="best of this many runs (default 2)")


def _best(fn, repeat):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run(args):
    import numpy as np

    from llmpy.data.prepro import default_documents, encode_documents
    from llmpy.tokenizers.gpt2 import get_gpt2_tokenizer

    workers = args.workers or os.cpu_count() or 1
    topics = default_documents()
    size = sum(len(d.encode()) for d in topics)
    docs = topics * max(1, round(args.mb * 1e6 / size))
    nbytes = size * (len(docs) // len(topics))
    enc = get_gpt2_tokenizer()
    print(f"text: {nbytes / 1e6:.1f} MB in {len(docs):,} documents; {workers} workers for 'all cores'")

    def plain():
        return sum(len(enc.encode_ordinary(d)) for d in docs)

    def pipeline(n):
        return lambda: len(np.concatenate(list(encode_documents(docs, enc, num_workers=n, chunksize=64))))

    def plain_batch():
        return sum(len(t) for t in enc.encode_ordinary_batch(docs, num_threads=workers))

    rows = [
        ("tiktoken, 1 process", plain),
        ("pipeline, 1 process", pipeline(1)),
        (f"tiktoken, {workers} threads", plain_batch),
        (f"pipeline, {workers} processes", pipeline(workers)),
    ]
    rates = []
    for name, fn in rows:
        seconds, ntok = _best(fn, args.repeat)
        ntok_docs = ntok if "pipeline" not in name else ntok - len(docs)  # do not count the EOT tokens
        rates.append(ntok_docs / seconds)
        print(f"{name:28s} {ntok_docs:>12,} tokens  {seconds:7.3f} s  {rates[-1] / 1e6:6.2f} M tokens/s")
    print(f"pipeline / tiktoken, 1 process: {rates[1] / rates[0]:.2f}x;  all cores: {rates[3] / rates[2]:.2f}x;  "
          f"all cores / 1 process (pipeline): {rates[3] / rates[1]:.2f}x")
    return 0
