"""The distributed DataLoader of llm.c (llmc/dataloader.h) over token shards read batch by batch.

A glob of shards is read in (B,T) batches: `next_batch()` returns inputs x and targets y, both int32 (B,T),
y being x shifted by one token. With `world_size` processes, sample i of a shard is the
world_size*B*T (+1) tokens starting at i*world_size*B*T, and rank r reads its B*T+1 token slice
r*B*T ... (r+1)*B*T: the ranks see disjoint inputs and together cover the data once per epoch, exactly as
llm.c. A shard therefore holds (ntok - 1) // (world_size*B*T) samples; the tail is skipped.

Shuffling (training): each epoch visits the shards in a random order and the samples of each shard in a
random order. Two orders:
- shuffle=True: every permutation comes from its own NumPy generator seeded by (seed, epoch) or (seed,
  epoch, shard position), the same on every rank;
- shuffle="llmc": llm.c's own order (llmc/dataloader.h): one mt19937 stream per rank seeded 42 + rank,
  shard order permuted again each epoch, a fresh sample permutation per shard (llmpy.data.llmc_rand),
  so training with llm.c's settings sees the batches of llm.c's train_gpt2.c step for step. `seed` is
  not used in this mode.
Either way the position (epoch, shard, sample) is the whole state (the llm.c stream is replayed from its
seed): `state_dict()` is a few plain ints that np.savez or JSON store without pickle, and a restored loader
yields exactly the batches an uninterrupted one would have. Without shuffling (validation) the shards and
samples are read in order.

Reading: at start every shard's header is checked and its length noted (no pass over the tokens); like
llm.c, the loader then keeps only the shard it is in open, a llmpy.formats.tokens.ShardReader that reads each
batch's B*T+1 tokens with one os.pread. A shard truncated under a running job is an LlmpyError naming it,
never a SIGBUS, and the ids of uint32 shards are checked in each batch read, not in a scan of every shard at
start. A shard replaced by one of another length after the loader started is an LlmpyError when the loader
reaches it.

Not handled: shards whose contents change (same length) while a loader reads them, documents aligned to batch
rows (batches cut across EOT tokens, as in llm.c).
"""

import glob

import numpy as np

from llmpy.data.llmc_rand import LLMC_SHUFFLE_SEED, LlmcShuffle
from llmpy.errors import LlmpyError
from llmpy.formats.tokens import ShardReader

STATE_VERSION = 1
SHUFFLE_MODES = {False: 0, True: 1, "llmc": 2}  # what `shuffle` takes -> its code in state_dict()
STATE_KEYS = ("version", "B", "T", "rank", "world_size", "shuffle", "seed", "num_shards", "num_tokens",
              "epoch", "shard_pos", "sample_pos")


class DataLoader:
    """Batches (x, y) of shape (B,T) from the shards matching `pattern`, llm.c's data order.

    pattern: a glob (or a list of paths); B, T: batch size and sequence length;
    rank, world_size: this process and the number of data-parallel processes;
    shuffle: False (in order), True (seeded by `seed`) or "llmc" (llm.c's mt19937 order, seeded 42 + rank),
    see the module docstring; vocab_size: if given, every batch is checked to hold token ids < vocab_size;
    fmt: "llmc" shards, or "raw_uint16" / "raw_int32" headerless files.
    """

    def __init__(self, pattern, B, T, rank=0, world_size=1, shuffle=False, seed=1337, vocab_size=None, fmt="llmc"):
        if B < 1 or T < 1:
            raise LlmpyError(f"batch size B={B} and sequence length T={T} must be positive")
        if not 0 <= rank < world_size:
            raise LlmpyError(f"rank {rank} must be in [0, world_size={world_size})")
        self.B, self.T = int(B), int(T)
        self.rank, self.world_size = int(rank), int(world_size)
        if isinstance(shuffle, str) and shuffle not in SHUFFLE_MODES:
            raise LlmpyError(f"shuffle={shuffle!r} is not one of False, True or 'llmc'")
        self.shuffle = SHUFFLE_MODES[shuffle if isinstance(shuffle, str) else bool(shuffle)]
        self.seed = LLMC_SHUFFLE_SEED + self.rank if shuffle == "llmc" else int(seed)
        self.vocab_size = vocab_size
        if isinstance(pattern, (list, tuple)):
            self.files = sorted(str(p) for p in pattern)
        else:
            self.files = sorted(glob.glob(str(pattern)))
        if not self.files:
            raise LlmpyError(f"no token shards match {pattern!r}; run `llmpy prepro NAME` first or fix the path")
        self.fmt = fmt
        self.lengths = [self._shard_length(f) for f in self.files]  # validates every header
        self.samples_per_shard = []
        for path, ntok in zip(self.files, self.lengths):
            n = (ntok - 1) // self.global_batch_tokens if ntok else 0
            if n < 1:
                raise LlmpyError(f"{path} holds {ntok:,} tokens, fewer than one batch needs "
                                 f"(world_size*B*T+1 = {self.global_batch_tokens + 1:,}); use smaller B or T, or "
                                 "make bigger shards")
            self.samples_per_shard.append(n)
        self.num_tokens = int(sum(self.lengths))
        self.reader, self.reader_shard = None, None   # the current shard's ShardReader, opened when a batch needs it
        self.llmc_order = self._llmc_order()
        self.reset()

    def _shard_length(self, path):
        reader = ShardReader(path, fmt=self.fmt)
        reader.close()
        return len(reader)

    def _open_current(self):
        """The ShardReader of the current shard: the open one, or the shard opened now (the one before closed)."""
        if self.reader is not None and self.reader_shard == self.current_shard:
            return self.reader
        self.close()
        path = self.files[self.current_shard]
        reader = ShardReader(path, fmt=self.fmt)
        if len(reader) != self.lengths[self.current_shard]:
            reader.close()
            raise LlmpyError(f"{path} now holds {len(reader):,} tokens, {self.lengths[self.current_shard]:,} when "
                             "this run started: the shard was replaced; restart the run with the new data")
        self.reader, self.reader_shard = reader, self.current_shard
        return reader

    def close(self):
        """Close the open shard (a later batch opens it again)."""
        if self.reader is not None:
            self.reader.close()
            self.reader = None

    def _llmc_order(self):
        if self.shuffle != SHUFFLE_MODES["llmc"]:
            return None
        return LlmcShuffle(self.samples_per_shard, self.seed)

    @property
    def global_batch_tokens(self):
        return self.world_size * self.B * self.T

    @property
    def num_shards(self):
        return len(self.files)

    @property
    def batches_per_epoch(self):
        """How many next_batch() calls one pass over all shards takes (on every rank)."""
        return int(sum(self.samples_per_shard))

    # ---- order ---------------------------------------------------------------------------------------
    def _orders(self, epoch, shard_pos):
        """(the shard order of `epoch`, the sample order of the shard at `shard_pos` in it)."""
        if self.llmc_order is not None:
            return self.llmc_order.orders(epoch, shard_pos)
        if not self.shuffle:
            shard_order = np.arange(self.num_shards)
            return shard_order, np.arange(self.samples_per_shard[shard_pos])
        shard_order = np.random.default_rng([self.seed, epoch]).permutation(self.num_shards)
        n = self.samples_per_shard[shard_order[shard_pos]]
        return shard_order, np.random.default_rng([self.seed, epoch, shard_pos]).permutation(n)

    def _enter(self, epoch, shard_pos, sample_pos):
        """Move to (epoch, shard position, sample position) and build the orders it needs."""
        self.epoch, self.shard_pos, self.sample_pos = epoch, shard_pos, sample_pos
        self.shard_order, self.sample_order = self._orders(epoch, shard_pos)
        self.current_shard = int(self.shard_order[shard_pos])

    def reset(self):
        """Back to the first batch of the first epoch (for each validation pass)."""
        self._enter(0, 0, 0)

    # ---- batches -------------------------------------------------------------------------------------
    def next_batch(self):
        """Inputs and targets, int32 arrays (B,T), then advance (to the next shard / epoch as needed)."""
        B, T = self.B, self.T
        sample = int(self.sample_order[self.sample_pos])
        start = sample * self.global_batch_tokens + self.rank * B * T
        buf = self._open_current()[start:start + B * T + 1].astype(np.int32)  # (B*T+1,)
        if self.vocab_size is not None and buf.max() >= self.vocab_size:
            raise LlmpyError(f"token id {int(buf.max())} >= vocab_size {self.vocab_size} in "
                             f"{self.files[self.current_shard]} (tokens {start}..{start + B * T}); the shard was "
                             "made with another tokenizer: re-run `llmpy prepro` or fix --vocab-size")
        x = buf[:-1].reshape(B, T)
        y = buf[1:].reshape(B, T)
        self._advance()
        return x, y

    def _advance(self):
        if self.sample_pos + 1 < len(self.sample_order):
            self.sample_pos += 1
        elif self.shard_pos + 1 < self.num_shards:
            self._enter(self.epoch, self.shard_pos + 1, 0)
        else:
            self._enter(self.epoch + 1, 0, 0)

    # ---- exact position ------------------------------------------------------------------------------
    def state_dict(self):
        """The position as plain ints: saveable with np.savez or JSON; the orders follow from seed + position."""
        return {
            "version": STATE_VERSION, "B": self.B, "T": self.T, "rank": self.rank, "world_size": self.world_size,
            "shuffle": self.shuffle, "seed": self.seed, "num_shards": self.num_shards,
            "num_tokens": self.num_tokens, "epoch": self.epoch, "shard_pos": self.shard_pos,
            "sample_pos": self.sample_pos,
        }

    def load_state_dict(self, state):
        """Continue from a state_dict(): the next batches are those the saved loader would have returned."""
        missing = [k for k in STATE_KEYS if k not in state]
        if missing:
            raise LlmpyError(f"dataloader state lacks {missing}; it was not written by DataLoader.state_dict()")
        s = {k: int(np.asarray(state[k])) for k in STATE_KEYS}  # np.load gives 0-d arrays
        if s["version"] != STATE_VERSION:
            raise LlmpyError(f"dataloader state version {s['version']} is not {STATE_VERSION}; restart the data order")
        mine = self.state_dict()
        for k in ("B", "T", "rank", "world_size", "shuffle", "num_shards", "num_tokens"):
            if s[k] != mine[k]:
                raise LlmpyError(f"dataloader state was saved with {k}={s[k]} but this loader has {k}={mine[k]}; "
                                 "resume with the same data, batch size, sequence length and process count")
        self.seed = s["seed"]
        self.llmc_order = self._llmc_order()
        if not 0 <= s["shard_pos"] < self.num_shards or s["epoch"] < 0:
            raise LlmpyError(f"dataloader state position {s} is outside the {self.num_shards} shards")
        self._enter(s["epoch"], s["shard_pos"], 0)
        if not 0 <= s["sample_pos"] < len(self.sample_order):
            raise LlmpyError(f"dataloader state sample {s['sample_pos']} is outside shard "
                             f"{self.files[self.current_shard]}")
        self.sample_pos = s["sample_pos"]
