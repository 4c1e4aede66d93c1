"""llm.c's data shuffling: the Mersenne Twister of llmc/rand.h, its random_permutation, and the order in
which llmc/dataloader.h visits shards and samples.

MT19937 here is Matsumoto and Nishimura's generator with their init_genrand seeding, which is what llm.c's
`manual_seed` / `randint32` compute (PyTorch's CPU generator, numerically) and what NumPy's legacy
`np.random.RandomState(seed)` draws. The 624-word state is twisted with array slices and outputs are
tempered in bulk, so long permutations cost little.

llm.c's DataLoader with shuffling (train_gpt2.c's training loader) keeps one generator seeded 42 + rank:
- at init, shard_indices = [0, 1, ..., num_shards-1] (init_identity_permutation), once;
- at the start of every epoch (dataloader_reset) shard_indices is permuted again *in place*, so epoch e's
  shard order is the composition of e+1 permutations, not a fresh one;
- whenever a shard is entered (reset or advance) its samples get a fresh permutation of
  [0, ..., shard_num_samples-1];
- random_permutation is Fisher-Yates from the end: for i = n-1 .. 1, j = randint32() % (i+1), swap i, j.
LlmcShuffle reproduces that order step for step, and can jump to any (epoch, shard position) by replaying
the generator from its seed (draws that only fed skipped shards are generated, not permuted).

Not handled: llm.c's resume (`dataloader_resume` restores the shard and sample index but not the
generator, so a resumed llm.c run does not continue its own order; here a resume continues exactly).
"""

import numpy as np

N = 624  # words of state
M = 397  # the twist's middle offset
MATRIX_A = 0x9908B0DF
UPPER_MASK = 0x80000000
LOWER_MASK = 0x7FFFFFFF
INIT_MULTIPLIER = 1812433253
LLMC_SHUFFLE_SEED = 42  # llm.c seeds the shuffling generator of rank r with 42 + r


def _mix(y):
    # the twist's y >> 1, xor MATRIX_A when y is odd; y is a uint32 array
    return (y >> 1) ^ (MATRIX_A * (y & 1)).astype(np.uint32)


def temper(y):
    """MT19937's output tempering of raw state words (uint32 array -> uint32 array)."""
    y = y ^ (y >> 11)
    y = y ^ ((y << 7) & 0x9D2C5680)
    y = y ^ ((y << 15) & 0xEFC60000)
    return y ^ (y >> 18)


class MT19937:
    """llm.c's mt19937_state: `randint32(n)` gives the next n outputs of randint32() as a uint32 array."""

    def __init__(self, seed):
        # manual_seed / init_genrand: state[j] = 1812433253 * (state[j-1] ^ (state[j-1] >> 30)) + j (mod 2^32)
        words = [seed & 0xFFFFFFFF]
        for j in range(1, N):
            words.append((INIT_MULTIPLIER * (words[-1] ^ (words[-1] >> 30)) + j) & 0xFFFFFFFF)
        self.state = np.array(words, dtype=np.uint32)
        self.index = N  # the next output comes from state[index]; N means "twist first", as llm.c's left_ = 1

    def _twist(self):
        """llm.c's next_state: state[j] = state[j+M] ^ mix(upper bit of state[j] | lower bits of state[j+1]),
        indices mod N, j = 0..N-1 in order, so later j see the new values of earlier ones."""
        old, new = self.state, np.empty_like(self.state)
        y = (old[:-1] & UPPER_MASK) | (old[1:] & LOWER_MASK)     # (N-1,), for j = 0..N-2 (old words)
        new[:N - M] = old[M:] ^ _mix(y[:N - M])                  # j < N-M reads old[j+M]
        new[N - M:2 * (N - M)] = new[:N - M] ^ _mix(y[N - M:2 * (N - M)])   # j+M-N < N-M: already new
        new[2 * (N - M):N - 1] = new[N - M:M - 1] ^ _mix(y[2 * (N - M):])   # the rest of j < N-1
        y_last = (old[N - 1] & UPPER_MASK) | (new[0] & LOWER_MASK)          # wraps to the new state[0]
        new[N - 1] = new[M - 1] ^ _mix(np.array([y_last], dtype=np.uint32))[0]
        self.state, self.index = new, 0

    def _raw(self, n, keep):
        out = np.empty(n if keep else 0, dtype=np.uint32)
        done = 0
        while done < n:
            if self.index == N:
                self._twist()
            take = min(n - done, N - self.index)
            if keep:
                out[done:done + take] = self.state[self.index:self.index + take]
            self.index += take
            done += take
        return out

    def randint32(self, n):
        """The next n outputs (uint32 array of shape (n,))."""
        return temper(self._raw(n, keep=True))

    def skip(self, n):
        """Advance past n outputs without computing them."""
        self._raw(n, keep=False)


def random_permutation(data, rng):
    """llm.c's random_permutation of the 1-D int array `data` (returns a permuted copy): Fisher-Yates from
    the end, j = randint32() % (i + 1) for i = n-1 down to 1; draws n-1 numbers."""
    out = np.asarray(data).tolist()
    n = len(out)
    if n < 2:
        return np.array(out, dtype=np.int64)
    i = np.arange(n - 1, 0, -1)                                  # (n-1,)
    j = rng.randint32(n - 1).astype(np.int64) % (i + 1)          # (n-1,)
    for a, b in zip(i.tolist(), j.tolist()):  # sequential: each swap sees the earlier ones
        out[a], out[b] = out[b], out[a]
    return np.array(out, dtype=np.int64)


class LlmcShuffle:
    """The shard and sample order of llm.c's shuffling DataLoader (see the module docstring).

    samples_per_shard: samples in each shard, in glob (sorted) order; seed: 42 + rank in llm.c.
    `orders(epoch, shard_pos)` -> (shard order of that epoch, sample order of its shard_pos-th shard).
    Asked in sequence it just continues drawing; asked anything else it replays from the seed.
    """

    def __init__(self, samples_per_shard, seed):
        self.samples_per_shard = [int(n) for n in samples_per_shard]
        self.seed = int(seed)
        self._restart()

    def _restart(self):
        self.rng = MT19937(self.seed)
        self.shard_indices = np.arange(len(self.samples_per_shard))  # init_identity_permutation, at init only
        self.next_pos = (0, 0)

    def _step(self, keep):
        """Draw what entering the next shard draws; the sample order if `keep`, else the draws are skipped."""
        epoch, shard_pos = self.next_pos
        if shard_pos == 0:  # dataloader_reset: a new epoch permutes the shard order again, in place
            self.shard_indices = random_permutation(self.shard_indices, self.rng)
        n = self.samples_per_shard[self.shard_indices[shard_pos]]
        order = None
        if keep:
            order = random_permutation(np.arange(n), self.rng)
        else:
            self.rng.skip(max(n - 1, 0))
        last = shard_pos + 1 == len(self.samples_per_shard)
        self.next_pos = (epoch + 1, 0) if last else (epoch, shard_pos + 1)
        return order

    def orders(self, epoch, shard_pos):
        if (epoch, shard_pos) < self.next_pos:  # behind the generator: replay from the seed
            self._restart()
        while self.next_pos != (epoch, shard_pos):
            self._step(keep=False)
        sample_order = self._step(keep=True)
        return self.shard_indices.copy(), sample_order
