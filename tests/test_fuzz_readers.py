"""Fuzzing every reader: mutants of tiny files written by the project's own writers must either be refused
with an LlmpyError or load into finite, in-range values, never raise anything else, and never allocate
beyond a bound (tracemalloc's peak, which NumPy's allocations are counted in).

Mutations (seeded numpy Generator): truncation at every header field boundary and at random points, a
header field set to 0 / -1 / 1 / huge / the int32 extremes, two fields set huge at once (products that
overflow 32 or 64 bits), bit flips in the header and anywhere, NaN/inf written over a payload value;
for JSON headers (safetensors, config.json): a field replaced by a value of the wrong type or size.

In CI: MUTANTS per format. A bigger campaign, printing outcome counts per format:
    python tests/test_fuzz_readers.py 2000 [seed]
"""

import json
import math
import struct
import sys
import tracemalloc
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from llmpy.errors import LlmpyError
from llmpy.formats import hellaswag, llama2c, llmc, safetensors, tokenizer_file, tokens
from llmpy.gpt2 import hf
from llmpy.gpt2.model import GPT2Config, init_params, num_parameters
from llmpy.llama.inference import Transformer
from llmpy.llama.model import LlamaConfig, random_weights
from llmpy.tokenizers.llama2 import Llama2Tokenizer

MUTANTS = 300  # per format in CI
ALLOC_LIMIT = 64 << 20  # bytes: the seeds are < 200 KB; anything near this is a runaway allocation
CONTEXT_FLOOR = 8 << 20  # llama2c.CONTEXT_FLOOR_BYTES during fuzzing, so the seq_len bound is what refuses
GPT = GPT2Config(max_seq_len=16, vocab_size=70, padded_vocab_size=128, num_layers=2, num_heads=4, channels=32)
LLAMA_SHARED = LlamaConfig(32, 64, 2, 4, 2, 40, 16, True)
LLAMA_UNSHARED = LlamaConfig(32, 64, 2, 4, 4, 40, 16, False)
INT_VALUES = (0, -1, 1, 2, 3, 7, 2**16, 2**20, 2**30, 2**31 - 1, -2**31)
JSON_VALUES = (-1, 0, 1.5, "x", None, True, [], {}, 2**64, -2**63, [0], [0, 2**62], [2**62, 2**62, 2**62], [[1]])
TEXT = "hello world, é ü 日本 🙂"


# ----------------------------------------------------------------------------
# seeds: (file bytes, header fields as (offset, struct format)), written by the project's writers

def _ints(n, start=0, fmt="<i"):
    return [(start + 4 * i, fmt) for i in range(n)]


class ByteVocab:
    n_vocab, eot_token = 257, 256

    def decode_single_token_bytes(self, i):
        return bytes([i]) if i < 256 else b"<|endoftext|>"


def llama2c_tokenizer():
    vocab = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [f"<0x{b:02X}>".encode() for b in range(256)]
    vocab += [b" ", b"h", b"e", b"l", b"o", b"he", b"ll", b"hell", b"hello", b" w"]
    return Llama2Tokenizer(vocab, [0.0] * 259 + [-float(i) for i in range(10)])


def make_seeds(d):
    """{format: [(path, bytes, fields)]} written once into directory d."""
    d = Path(d)
    rng = np.random.default_rng(0)
    seeds = {}

    def keep(fmt, path, fields):
        seeds.setdefault(fmt, []).append((path, Path(path).read_bytes(), fields))

    params = init_params(GPT, rng)
    for dtype in ("float32", "bfloat16"):
        llmc.save_checkpoint(d / f"gpt_{dtype}.bin", GPT, params, dtype)
        keep("llmc_checkpoint", d / f"gpt_{dtype}.bin", _ints(8))
    B, T = 1, 4
    header = np.zeros(256, "<i4")
    header[:4] = [llmc.STATE_MAGIC, llmc.STATE_VERSION, B, T]
    xy = rng.integers(0, GPT.vocab_size, 2 * B * T).astype("<i4")
    floats = rng.standard_normal(B * T * GPT.vocab_size + 1 + num_parameters(GPT)).astype("<f4")
    (d / "state.bin").write_bytes(header.tobytes() + xy.tobytes() + floats.tobytes())
    keep("llmc_debug_state", d / "state.bin", _ints(4))
    for config in (LLAMA_SHARED, LLAMA_UNSHARED):
        weights = random_weights(config, rng)
        for v in (0, 1, 2):
            path = d / f"llama_{config.shared_classifier}_v{v}.bin"
            llama2c.write_llama2c(path, config, weights, v, group_size=16)
            fields = _ints(7) if v == 0 else [(0, "<I"), (4, "<i")] + _ints(7, 8) + [(36, "<B")] + [(37, "<i")] * (
                v == 2)
            keep(f"llama2c_v{v}", path, fields)
    tensors = {"w": rng.standard_normal((4, 8)).astype(np.float32), "b": rng.standard_normal(5).astype(np.float32),
               "i": np.arange(6, dtype=np.int64).reshape(2, 3)}
    safetensors.write_safetensors(d / "t.safetensors", tensors, {"format": "pt"}, bf16={"b"})
    keep("safetensors", d / "t.safetensors", [(0, "<Q")])
    hf.export_hf(d / "hf", GPT, params)
    keep("hf_dir", d / "hf" / "model.safetensors", [(0, "<Q")])
    tokens.write_shard(d / "s16.bin", rng.integers(0, 50257, 300))
    keep("token_shard", d / "s16.bin", _ints(3))
    tokens.write_shard(d / "s32.bin", rng.integers(0, 128256, 300), vocab_size=128256)
    keep("token_shard", d / "s32.bin", _ints(3))
    tokenizer_file.write_tokenizer(d / "gpt2_tokenizer.bin", ByteVocab())
    keep("llmc_tokenizer", d / "gpt2_tokenizer.bin", _ints(4) + [(1024, "<B"), (1026, "<B")])
    llama2c_tokenizer().save(d / "tokenizer.bin")
    keep("llama2c_tokenizer", d / "tokenizer.bin", [(0, "<i"), (4, "<f"), (8, "<i"), (17, "<f"), (21, "<i")])
    examples = [{"label": int(rng.integers(4)), "ctx_tokens": rng.integers(0, 50, 5).tolist(),
                 "ending_tokens": [rng.integers(0, 50, 1 + k).tolist() for k in range(4)]} for _ in range(3)]
    hellaswag.write_evalfile(d / "hs.bin", examples)
    keep("hellaswag", d / "hs.bin", _ints(4) + [(1024 + 2 * i, "<H") for i in range(8)])
    return seeds


# ----------------------------------------------------------------------------
# loaders: each returns normally only with values it has checked, else raises

def _all_finite(arrays):
    for a in arrays:
        assert np.isfinite(np.asarray(a, dtype=np.float32)).all(), "a load returned a non-finite value"


def load_llmc_checkpoint(path):
    config, params = llmc.load_checkpoint(path)
    assert params.size == num_parameters(config)
    _all_finite([params])


def load_llmc_debug_state(path):
    state = llmc.load_debug_state(path, GPT)
    assert 0 <= state.x.min() and state.x.max() < GPT.vocab_size and 0 <= state.y.min()
    _all_finite([state.logits, state.grads, [state.loss]])


def load_llama2c(path):
    _, weights, _, _ = llama2c.read_llama2c(path)
    _all_finite(llama2c._float_parts(weights).values())
    t = Transformer.from_file(path)  # what `llmpy run` allocates
    _all_finite([t.tok_emb, t.rms_att, t.rms_ffn, t.rms_final])
    assert t.key_cache.nbytes <= 2 * llama2c.CONTEXT_LIMIT_WEIGHTS * path.stat().st_size + CONTEXT_FLOOR


def load_safetensors(path):
    tensors, metadata = safetensors.read_safetensors(path)
    assert all(isinstance(v, str) for v in metadata.values())
    for a in tensors.values():
        a.sum()  # every view is readable


def load_hf_dir(path):
    _, params = hf.load_hf_dir(path.parent)
    _all_finite([params])


def load_token_shard(path):
    for mmap in (True, False):
        t = tokens.read_shard(path, mmap=mmap)
        assert t.size == 0 or int(t.max()) < 2**31
    reader = tokens.ShardReader(path)
    assert len(reader) == t.size and (t.size == 0 or int(reader[0:len(reader)].max()) < 2**31)


def load_llmc_tokenizer(path):
    tok = tokenizer_file.read_tokenizer(path)
    assert 0 <= tok.eot_token < tok.vocab_size
    tok.decode(range(tok.vocab_size))


def load_llama2c_tokenizer(path):
    tok = Llama2Tokenizer.load(path, 269)
    ids = tok.encode(TEXT, bos=True, eos=True)
    assert all(0 <= i < tok.vocab_size for i in ids)
    tok.decode_all(ids)


def load_hellaswag(path):
    for ex in hellaswag.read_evalfile(path, vocab_size=50):
        assert 0 <= ex["label"] < 4 and ex["ctx_tokens"] and all(ex["ending_tokens"])
        assert max(ex["ctx_tokens"] + [t for e in ex["ending_tokens"] for t in e]) < 50


LOADERS = {"llmc_checkpoint": load_llmc_checkpoint, "llmc_debug_state": load_llmc_debug_state,
           "llama2c_v0": load_llama2c, "llama2c_v1": load_llama2c, "llama2c_v2": load_llama2c,
           "safetensors": load_safetensors, "hf_dir": load_hf_dir, "token_shard": load_token_shard,
           "llmc_tokenizer": load_llmc_tokenizer, "llama2c_tokenizer": load_llama2c_tokenizer,
           "hellaswag": load_hellaswag}
FLOAT_PAYLOAD = {"llmc_checkpoint", "llmc_debug_state", "llama2c_v0", "llama2c_v1", "llama2c_v2", "hf_dir"}


# ----------------------------------------------------------------------------
# mutations

def _pick(values, rng):
    return values[int(rng.integers(len(values)))]


def _set_field(raw, field, rng, big=False):
    offset, fmt = field
    if offset + struct.calcsize(fmt) > len(raw):
        return
    if fmt == "<f":
        value = _pick([math.nan, math.inf, -1e30, 0.0], rng)
    elif fmt in ("<B", "<H", "<I", "<Q"):
        top = 2 ** (8 * struct.calcsize(fmt)) - 1
        value = _pick([0, 1, top, top // 2 + 1, int(rng.integers(0, min(top, 2**62)))], rng)
    else:
        value = _pick(INT_VALUES[7:] if big else INT_VALUES, rng)
    struct.pack_into(fmt, raw, offset, value)


def _json_mutant(raw, rng):
    """A safetensors file whose JSON header has one field replaced (the length kept consistent)."""
    (n,) = struct.unpack_from("<Q", raw)
    header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
    names = [k for k in header if k != "__metadata__"]
    name = names[int(rng.integers(len(names)))]
    key = str(rng.choice(["dtype", "shape", "data_offsets", "entry", "metadata"]))
    value = _pick(JSON_VALUES, rng)
    if key == "entry":
        header[name] = value
    elif key == "metadata":
        header["__metadata__"] = value
    else:
        header[name][key] = value
    body = json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body + data


def mutate(raw, fields, rng, fmt):
    """One mutant of `raw` and a label for the kind of mutation."""
    raw = bytearray(raw)
    op = int(rng.integers(7 if fmt in ("safetensors", "hf_dir") else 6))
    if op == 0:  # truncate at a field boundary or anywhere
        ends = sorted({o for o, _ in fields} | {o + struct.calcsize(f) for o, f in fields})
        cut = int(rng.choice(ends)) if rng.random() < 0.6 else int(rng.integers(len(raw)))
        return bytes(raw[:cut]), "truncate"
    if op == 1:  # one field set to a special value
        _set_field(raw, fields[int(rng.integers(len(fields)))], rng)
        return bytes(raw), "field"
    if op == 2:  # two fields set huge
        for i in rng.choice(len(fields), size=min(2, len(fields)), replace=False):
            _set_field(raw, fields[int(i)], rng, big=True)
        return bytes(raw), "two fields"
    if op == 3:  # bit flips in the header
        end = max(o + struct.calcsize(f) for o, f in fields)
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(min(end, len(raw))))
            raw[i] ^= 1 << int(rng.integers(8))
        return bytes(raw), "header bits"
    if op == 4:  # bit flips anywhere
        for _ in range(int(rng.integers(1, 8))):
            i = int(rng.integers(len(raw)))
            raw[i] ^= 1 << int(rng.integers(8))
        return bytes(raw), "bits"
    if op == 5:  # a NaN/inf over the payload (4-byte aligned from the end: float data), or garbage appended
        if fmt in FLOAT_PAYLOAD:
            i = len(raw) - 4 * int(rng.integers(1, (len(raw) - 1024) // 4))
            struct.pack_into("<f", raw, i, _pick([math.nan, math.inf, -math.inf], rng))
            return bytes(raw), "nan"
        return bytes(raw) + rng.bytes(int(rng.integers(1, 9))), "append"
    return _json_mutant(bytes(raw), rng), "json"


def run_one(loader, path, data):
    """'error' (LlmpyError) or 'load'; anything else propagates. Asserts the allocation peak."""
    path.write_bytes(data)
    tracemalloc.reset_peak()
    start = tracemalloc.get_traced_memory()[0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            loader(path)
        outcome = "load"
    except LlmpyError:
        outcome = "error"
    peak = tracemalloc.get_traced_memory()[1] - start
    assert peak <= ALLOC_LIMIT, f"{path.name}: allocated {peak / 2**20:.0f} MiB"
    return outcome


def target(fmt, src, work):
    """Where a mutant of the seed file `src` is written (hf_dir: a model.safetensors beside a good config.json)."""
    src = Path(src)
    if fmt != "hf_dir":
        return work / src.name
    path = work / src.parent.name / src.name
    path.parent.mkdir(exist_ok=True)
    (path.parent / "config.json").write_bytes((src.parent / "config.json").read_bytes())
    return path


def campaign(fmt, seeds, n, seed, work):
    """Run n mutants of the seeds of one format; returns Counter of (mutation, outcome)."""
    rng = np.random.default_rng([seed, sum(map(ord, fmt))])
    counts = Counter()
    loader = LOADERS[fmt]
    for k in range(n):
        src, raw, fields = seeds[k % len(seeds)]
        data, label = mutate(raw, fields, rng, fmt)
        path = target(fmt, src, work)
        try:
            outcome = run_one(loader, path, data)
        except Exception as e:
            raise AssertionError(f"{fmt} mutant {k} ({label}) of {Path(src).name}: {type(e).__name__}: {e}") from e
        counts[label, outcome] += 1
    return counts


def config_json_campaign(n, seed, work):
    """Mutants of the Hugging Face config.json next to a good model.safetensors."""
    rng = np.random.default_rng([seed, 7])
    hf.export_hf(work / "cfg", GPT, init_params(GPT, rng))
    good = json.loads((work / "cfg" / "config.json").read_text())
    counts = Counter()
    for k in range(n):
        cfg = dict(good)
        op = int(rng.integers(4))
        if op == 0:
            text = json.dumps(cfg)[:int(rng.integers(len(json.dumps(cfg))))]  # truncated
        elif op == 1:
            text = json.dumps(_pick(JSON_VALUES, rng))  # not an object
        else:
            for _ in range(op):
                key = str(rng.choice(["n_head", "n_embd", "n_layer", "vocab_size", "n_positions"]))
                cfg[key] = _pick(JSON_VALUES if rng.random() < 0.5 else INT_VALUES, rng)
            text = json.dumps(cfg)
        (work / "cfg" / "config.json").write_text(text)
        tracemalloc.reset_peak()
        try:
            hf.load_hf_dir(work / "cfg")
            counts["config", "load"] += 1
        except LlmpyError:
            counts["config", "error"] += 1
        except Exception as e:
            raise AssertionError(f"config.json mutant {k}: {text[:200]}: {type(e).__name__}: {e}") from e
    return counts


# ----------------------------------------------------------------------------
# the test

@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return make_seeds(tmp_path_factory.mktemp("seeds"))


@pytest.fixture
def bounded(monkeypatch):
    monkeypatch.setattr(llama2c, "CONTEXT_FLOOR_BYTES", CONTEXT_FLOOR)
    tracemalloc.start()
    yield
    tracemalloc.stop()


@pytest.mark.parametrize("fmt", LOADERS)
def test_fuzz_reader(seeds, fmt, tmp_path, bounded):
    for src, raw, _ in seeds[fmt]:  # every seed loads
        assert run_one(LOADERS[fmt], target(fmt, src, tmp_path), raw) == "load"
    counts = campaign(fmt, seeds[fmt], MUTANTS, 0, tmp_path)
    outcomes = Counter(o for (_, o) in counts.elements())
    assert sum(outcomes.values()) == MUTANTS
    assert outcomes["error"] > 0  # the mutations do reach the checks


def test_fuzz_hf_config_json(tmp_path, bounded):
    counts = config_json_campaign(MUTANTS, 0, tmp_path)
    assert counts["config", "error"] > 0 and sum(counts.values()) == MUTANTS


def main(n=2000, seed=1):
    """Print outcome counts of n mutants per format (the bigger one-off campaign)."""
    import tempfile

    llama2c.CONTEXT_FLOOR_BYTES = CONTEXT_FLOOR
    tracemalloc.start()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        all_seeds = make_seeds(d / "seeds")
        total = Counter()
        for fmt in LOADERS:
            work = d / fmt
            work.mkdir()
            counts = campaign(fmt, all_seeds[fmt], n, seed, work)
            by_outcome = Counter(o for (_, o) in counts.elements())
            total.update(by_outcome)
            print(f"{fmt:18s} {n} mutants: {by_outcome['error']} LlmpyError, {by_outcome['load']} clean loads | "
                  + ", ".join(f"{m}:{o}={c}" for (m, o), c in sorted(counts.items())))
        (d / "cfgwork").mkdir()
        counts = config_json_campaign(n, seed, d / "cfgwork")
        total.update(Counter(o for (_, o) in counts.elements()))
        print(f"{'hf_config_json':18s} {n} mutants: {counts['config', 'error']} LlmpyError, "
              f"{counts['config', 'load']} clean loads")
        print(f"total: {sum(total.values())} mutants, {total['error']} LlmpyError, {total['load']} clean loads, "
              "0 other exceptions")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))  # [mutants per format [seed]]; the CI test is `300 0`
