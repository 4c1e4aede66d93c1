"""llm.c's shuffled data order: MT19937 against NumPy's, and DataLoader(shuffle="llmc") against a C program
written here from llm.c's published algorithm (llmc/rand.h, llmc/dataloader.h), compiled when cc exists."""

import shutil
import subprocess

import numpy as np
import pytest

from llmpy.data.dataloader import DataLoader
from llmpy.data.llmc_rand import MT19937, LlmcShuffle, random_permutation
from llmpy.errors import LlmpyError
from llmpy.formats.tokens import write_shard

# The reference: textbook MT19937 (a sequential twist over indices mod 624) and llm.c's loader loop.
# argv: seed steps samples_in_shard_0 samples_in_shard_1 ...; prints "shard sample" for each next_batch.
C_REFERENCE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>

#define NN 624
#define MM 397
typedef struct { uint32_t mt[NN]; int left, next; } Rng;

static void rng_seed(Rng *r, uint32_t seed) {
    r->mt[0] = seed;
    for (int j = 1; j < NN; j++) r->mt[j] = 1812433253u * (r->mt[j - 1] ^ (r->mt[j - 1] >> 30)) + (uint32_t)j;
    r->left = 1;
    r->next = 0;
}

static uint32_t rng_next(Rng *r) {
    if (--r->left <= 0) {
        for (int j = 0; j < NN; j++) {
            uint32_t y = (r->mt[j] & 0x80000000u) | (r->mt[(j + 1) % NN] & 0x7fffffffu);
            r->mt[j] = r->mt[(j + MM) % NN] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
        }
        r->left = NN;
        r->next = 0;
    }
    uint32_t y = r->mt[r->next++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

static void shuffle(int *a, int n, Rng *r) {
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(rng_next(r) % (uint32_t)(i + 1));
        int t = a[i]; a[i] = a[j]; a[j] = t;
    }
}

int main(int argc, char **argv) {
    uint32_t seed = (uint32_t)strtoul(argv[1], NULL, 10);
    long steps = atol(argv[2]);
    int nshards = argc - 3;
    int *samples = malloc(sizeof(int) * nshards), *shard_idx = malloc(sizeof(int) * nshards), *intra = NULL;
    for (int s = 0; s < nshards; s++) { samples[s] = atoi(argv[3 + s]); shard_idx[s] = s; }
    Rng rng;
    rng_seed(&rng, seed);
    int cur_shard = 0, n = 0;
    long cur_sample = 0;
    for (long step = -1; step < steps; step++) {
        int enter = 0;
        if (step == -1 || (cur_sample >= n && cur_shard == nshards - 1)) {  /* dataloader_reset */
            cur_shard = 0;
            shuffle(shard_idx, nshards, &rng);
            enter = 1;
        } else if (cur_sample >= n) {  /* dataloader_advance_ */
            cur_shard++;
            enter = 1;
        }
        if (enter) {  /* load the shard, prepare_intra_shard_indices_ */
            cur_sample = 0;
            n = samples[shard_idx[cur_shard]];
            free(intra);
            intra = malloc(sizeof(int) * n);
            for (int i = 0; i < n; i++) intra[i] = i;
            shuffle(intra, n, &rng);
        }
        if (step >= 0) printf("%d %d\n", shard_idx[cur_shard], intra[cur_sample++]);
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler for the llm.c reference")
    d = tmp_path_factory.mktemp("cref")
    (d / "ref.c").write_text(C_REFERENCE)
    subprocess.run([cc, "-O1", "-o", str(d / "ref"), str(d / "ref.c")], check=True)

    def run(seed, steps, samples):
        out = subprocess.run([str(d / "ref"), str(seed), str(steps), *map(str, samples)], check=True,
                             capture_output=True, text=True).stdout
        return [tuple(map(int, line.split())) for line in out.splitlines()]
    return run


def test_mt19937_equals_numpy():
    # NumPy's legacy RandomState(seed) is MT19937 with init_genrand, as llm.c's manual_seed
    for seed in (42, 43, 0, 5489, 2**32 - 1):
        rng = MT19937(seed)
        ours = np.concatenate([rng.randint32(1), rng.randint32(623), rng.randint32(1), rng.randint32(1500)])
        want = np.random.RandomState(seed).randint(0, 2**32, size=len(ours), dtype=np.uint32)
        np.testing.assert_array_equal(ours, want)
        assert ours.dtype == np.uint32
    skipped = MT19937(42)
    skipped.skip(1000)
    np.testing.assert_array_equal(skipped.randint32(5), np.random.RandomState(42).randint(
        0, 2**32, size=1005, dtype=np.uint32)[1000:])


def test_random_permutation_is_fisher_yates():
    # the same draws, applied one swap at a time in plain Python
    draws = np.random.RandomState(7).randint(0, 2**32, size=99, dtype=np.uint32)
    want = list(range(100))
    for k, i in enumerate(range(99, 0, -1)):
        j = int(draws[k]) % (i + 1)
        want[i], want[j] = want[j], want[i]
    assert random_permutation(np.arange(100), MT19937(7)).tolist() == want
    assert random_permutation(np.arange(1), MT19937(7)).tolist() == [0]


def shards_of(tmp_path, samples, B, T, world_size=1):
    """Shards whose token at every position says (shard, position): shard s holds s*SPAN + 0..n-1."""
    span = 20000
    for s, n in enumerate(samples):
        write_shard(tmp_path / f"d_train_{s:06d}.bin", s * span + np.arange(n * world_size * B * T + 1 + s % 2))
    return str(tmp_path / "d_train_*.bin"), span


def visited(loader, span, steps):
    out = []
    for _ in range(steps):
        x, _ = loader.next_batch()
        shard, pos = divmod(int(x[0, 0]), span)
        out.append((shard, (pos - loader.rank * loader.B * loader.T) // loader.global_batch_tokens))
    return out


@pytest.mark.parametrize("samples,world_size,rank", [([5, 7, 4], 1, 0), ([3, 6, 2, 5], 2, 1), ([700], 1, 0)])
def test_dataloader_follows_llmc(tmp_path, reference, samples, world_size, rank):
    B, T = 2, 4
    pattern, span = shards_of(tmp_path, samples, B, T, world_size)
    loader = DataLoader(pattern, B, T, rank=rank, world_size=world_size, shuffle="llmc")
    assert loader.samples_per_shard == samples
    steps = 3 * sum(samples) + 5  # three epochs and a bit: the shard order is permuted again each epoch
    want = reference(42 + rank, steps, samples)
    assert visited(loader, span, steps) == want
    # a restored loader continues exactly (the generator is replayed from its seed)
    fresh = DataLoader(pattern, B, T, rank=rank, world_size=world_size, shuffle="llmc")
    for cut in (1, sum(samples) + 2, 2 * sum(samples)):
        first = DataLoader(pattern, B, T, rank=rank, world_size=world_size, shuffle="llmc")
        visited(first, span, cut)
        fresh.load_state_dict(first.state_dict())
        assert visited(fresh, span, 10) == want[cut:cut + 10]


def test_llmc_order_state_and_modes(tmp_path):
    pattern, _ = shards_of(tmp_path, [5, 7, 4], 2, 4)
    loader = DataLoader(pattern, 2, 4, shuffle="llmc", seed=123)  # llm.c's seed is 42 + rank, whatever `seed`
    state = loader.state_dict()
    assert (state["shuffle"], state["seed"]) == (2, 42)
    seeded = DataLoader(pattern, 2, 4, shuffle=True)
    with pytest.raises(LlmpyError, match="shuffle=2"):
        seeded.load_state_dict(state)
    with pytest.raises(LlmpyError, match="'mt'"):
        DataLoader(pattern, 2, 4, shuffle="mt")
    # orders asked out of sequence replay the same draws
    order = LlmcShuffle([5, 7, 4], 42)
    in_sequence = [order.orders(e, p) for e in range(3) for p in range(3)]
    again = LlmcShuffle([5, 7, 4], 42)
    for (e, p), (shards, samples) in zip([(2, 1), (0, 2), (1, 0)], [in_sequence[7], in_sequence[2], in_sequence[3]]):
        got_shards, got_samples = again.orders(e, p)
        assert got_shards.tolist() == shards.tolist() and got_samples.tolist() == samples.tolist()
