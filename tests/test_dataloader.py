"""DataLoader: llm.c's batch layout, rank slicing, shuffling, exact resume, and bad input."""

import json
import os

import numpy as np
import pytest

from llmpy.data.dataloader import DataLoader
from llmpy.errors import LlmpyError
from llmpy.formats.tokens import write_shard

B, T = 2, 4


@pytest.fixture
def shards(tmp_path):
    # three shards of distinct, position-identifying tokens: shard s holds s*1000 + 0..n-1
    sizes = [41, 57, 33]
    for s, n in enumerate(sizes):
        write_shard(tmp_path / f"data_train_{s:06d}.bin", s * 1000 + np.arange(n))
    return str(tmp_path / "data_train_*.bin"), sizes


def test_sequential_matches_llmc_layout(shards):
    pattern, sizes = shards
    loader = DataLoader(pattern, B, T)
    assert loader.num_tokens == sum(sizes)
    assert loader.samples_per_shard == [(n - 1) // (B * T) for n in sizes]  # 5, 7, 4
    expected = []
    for s, n in enumerate(sizes):
        for i in range((n - 1) // (B * T)):
            start = s * 1000 + i * B * T
            expected.append(np.arange(start, start + B * T + 1))
    for buf in expected + expected[:3]:  # one full epoch, then wraps to the first shard
        x, y = loader.next_batch()
        assert x.dtype == np.int32 and y.dtype == np.int32 and x.shape == (B, T)
        np.testing.assert_array_equal(x.ravel(), buf[:-1])
        np.testing.assert_array_equal(y.ravel(), buf[1:])
    loader.reset()
    np.testing.assert_array_equal(loader.next_batch()[0].ravel(), expected[0][:-1])


def test_ranks_disjoint_and_cover_the_global_batch(shards):
    pattern, _ = shards
    world = 2
    loaders = [DataLoader(pattern, B, T, rank=r, world_size=world, shuffle=True, seed=7) for r in range(world)]
    single = DataLoader(pattern, B * world, T, shuffle=True, seed=7)  # same sample grid: world*B*T per sample
    for _ in range(single.batches_per_epoch):
        xs = [ld.next_batch()[0] for ld in loaders]
        assert not set(xs[0].ravel()) & set(xs[1].ravel())
        np.testing.assert_array_equal(np.concatenate(xs), single.next_batch()[0])


def test_shuffle_is_seeded_and_complete(shards):
    pattern, _ = shards

    def epoch(seed):
        ld = DataLoader(pattern, B, T, shuffle=True, seed=seed)
        return [tuple(ld.next_batch()[0].ravel()) for _ in range(ld.batches_per_epoch)]

    a, b, c = epoch(1), epoch(1), epoch(2)
    assert a == b and a != c
    seq = DataLoader(pattern, B, T)
    in_order = [tuple(seq.next_batch()[0].ravel()) for _ in range(seq.batches_per_epoch)]
    assert sorted(a) == sorted(in_order) and a != in_order  # a permutation of the same samples


def test_exact_resume_through_json_and_npz(shards, tmp_path):
    pattern, _ = shards
    ref = DataLoader(pattern, B, T, shuffle=True, seed=3)
    ld = DataLoader(pattern, B, T, shuffle=True, seed=3)
    for _ in range(23):  # into the second epoch
        ref.next_batch()
        ld.next_batch()
    state = ld.state_dict()
    (tmp_path / "s.json").write_text(json.dumps(state))
    np.savez(tmp_path / "s.npz", **state)
    from_json = DataLoader(pattern, B, T, shuffle=True, seed=99)
    from_json.load_state_dict(json.loads((tmp_path / "s.json").read_text()))
    from_npz = DataLoader(pattern, B, T, shuffle=True, seed=99)
    with np.load(tmp_path / "s.npz", allow_pickle=False) as f:
        from_npz.load_state_dict(dict(f))
    for _ in range(30):
        want = ref.next_batch()
        for got in (from_json.next_batch(), from_npz.next_batch()):
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
    other = DataLoader(pattern, B, T + 1, shuffle=True)
    with pytest.raises(LlmpyError, match="T=4"):
        other.load_state_dict(state)


def test_bad_input(tmp_path):
    with pytest.raises(LlmpyError, match="no token shards match"):
        DataLoader(str(tmp_path / "nothing_*.bin"), B, T)
    write_shard(tmp_path / "small.bin", np.arange(B * T))  # one token short of a batch
    with pytest.raises(LlmpyError, match="small.bin holds 8 tokens"):
        DataLoader(str(tmp_path / "small.bin"), B, T)
    write_shard(tmp_path / "big.bin", np.full(B * T + 1, 60000))
    loader = DataLoader(str(tmp_path / "big.bin"), B, T, vocab_size=50257)
    with pytest.raises(LlmpyError, match="big.bin"):
        loader.next_batch()


def test_raw_uint16_files(tmp_path):
    np.arange(100, dtype="<u2").tofile(tmp_path / "train.bin")
    loader = DataLoader(str(tmp_path / "train.bin"), B, T, fmt="raw_uint16")
    x, y = loader.next_batch()
    np.testing.assert_array_equal(x.ravel(), np.arange(B * T))
    np.testing.assert_array_equal(y.ravel(), np.arange(1, B * T + 1))
    with pytest.raises(LlmpyError, match="raw_uint16"):
        DataLoader(str(tmp_path / "train.bin"), B, T)


def test_a_shard_truncated_or_replaced_under_a_run_is_an_error(shards, tmp_path):
    pattern, _ = shards
    loader = DataLoader(pattern, B, T)
    np.testing.assert_array_equal(loader.next_batch()[0].ravel(), np.arange(B * T))
    first = tmp_path / "data_train_000000.bin"
    os.truncate(first, 1024 + 2 * 12)   # 12 of its 41 tokens left: the next batch reads past them
    with pytest.raises(LlmpyError, match="data_train_000000.bin is shorter than when it was opened"):
        loader.next_batch()
    # replaced atomically (a new file renamed over it) by one of another length: named when the loader gets there
    loader = DataLoader(str(tmp_path / "data_train_00000[12].bin"), B, T)
    write_shard(tmp_path / "data_train_000002.bin", np.arange(20))
    for _ in range(loader.samples_per_shard[0]):
        loader.next_batch()
    with pytest.raises(LlmpyError, match="data_train_000002.bin now holds 20 tokens, 33 when this run started"):
        loader.next_batch()


def test_uint32_ids_are_checked_per_batch_not_at_start(tmp_path):
    tokens = np.arange(81, dtype=np.uint32) + 70000
    tokens[50] = 2**31   # beyond any vocabulary: int32 would wrap it negative
    write_shard(tmp_path / "big.bin", tokens, vocab_size=2**31 + 1)
    loader = DataLoader(tmp_path / "big.bin", B, T)   # no scan of the file at start
    for i in range(6):   # the batches before token 50: uint32 ids come through as int32
        x, _ = loader.next_batch()
        np.testing.assert_array_equal(x.ravel(), 70000 + np.arange(i * 8, i * 8 + 8))
    with pytest.raises(LlmpyError, match="big.bin holds token id 2,147,483,648 at position 50"):
        loader.next_batch()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd to count open files")
def test_one_shard_open_at_a_time(tmp_path):
    for s in range(40):   # llm.c's fineweb has 100-1000 shards: not one open file each
        write_shard(tmp_path / f"many_{s:03d}.bin", s * 100 + np.arange(17))
    before = len(os.listdir("/proc/self/fd"))
    loader = DataLoader(str(tmp_path / "many_*.bin"), B, T, shuffle=True)
    seen = set()
    for _ in range(loader.batches_per_epoch):
        seen.add(int(loader.next_batch()[0][0, 0]) // 100)
        assert len(os.listdir("/proc/self/fd")) <= before + 1
    assert seen == set(range(40))
    loader.close()
    assert len(os.listdir("/proc/self/fd")) == before
