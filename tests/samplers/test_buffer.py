"""Replay buffer: FIFO at capacity, rank-based probabilities, state_dict round trip."""

import pytest
import torch

from mixlab.core.errors import ConfigError
from mixlab.samplers.buffer import ReplayBuffer, rank_weights


def _batch(start, n, d=3):
    idx = torch.arange(start, start + n, dtype=torch.float32)
    return idx[:, None].repeat(1, d), -idx  # x carries its insertion index; later = lower log R


def test_fifo_order_at_capacity():
    buf = ReplayBuffer(capacity=10)
    for start, n in ((0, 4), (4, 4), (8, 5), (13, 2)):  # 15 inserted, the 5 oldest overwritten
        buf.add(*_batch(start, n))
    x, log_r = buf.contents()
    assert len(buf) == 10 and x[:, 0].tolist() == list(range(5, 15)) and log_r.tolist() == [-i for i in range(5, 15)]
    buf.add(*_batch(15, 25))  # a batch larger than the capacity keeps its last 10
    assert buf.contents()[0][:, 0].tolist() == list(range(30, 40))
    single = ReplayBuffer(capacity=600_000)
    single.add(*_batch(0, 7))
    assert len(single) == 7  # the first add inserts once (the reference code inserted it twice)


def test_rank_probabilities_follow_the_formula():
    buf = ReplayBuffer(capacity=100, k=0.01)
    log_r = torch.tensor([0.5, 3.0, -1.0, 2.0, 3.0, 0.0])
    buf.add(torch.randn(6, 2), log_r)
    ranks = torch.tensor([3, 0, 5, 2, 1, 4])  # highest log R = rank 0; the tie 3.0 goes to the older entry
    expected = 1 / (0.01 * 6 + ranks.double())
    torch.testing.assert_close(buf.probabilities(), expected / expected.sum())
    torch.testing.assert_close(rank_weights(log_r), expected)
    # empirical frequencies of 200k draws with replacement match
    x, got = buf.sample(200_000, torch.Generator().manual_seed(1))
    freq = torch.stack([(got == v).double().mean() for v in (0.5, -1.0, 2.0, 0.0)])
    p = buf.probabilities()[[0, 2, 3, 5]]
    assert (freq - p).abs().max() < 0.005
    assert ((got == 3.0).double().mean() - buf.probabilities()[[1, 4]].sum()).abs() < 0.005
    # probabilities follow the contents after FIFO eviction
    buf2 = ReplayBuffer(capacity=4)
    buf2.add(torch.zeros(6, 1), torch.tensor([9.0, 8.0, 1.0, 4.0, 3.0, 2.0]))  # keeps 1, 4, 3, 2
    w = 1 / (0.04 + torch.tensor([3.0, 0.0, 1.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(buf2.probabilities(), w / w.sum())


def test_state_dict_round_trip_gives_the_same_next_batch():
    buf = ReplayBuffer(capacity=50)
    g = torch.Generator().manual_seed(2)
    for _ in range(4):  # wraps around: storage order != insertion order
        buf.add(torch.randn(17, 3, generator=g), torch.randn(17, generator=g))
    state = buf.state_dict()
    restored = ReplayBuffer(capacity=7)
    restored.load_state_dict(state)
    assert restored.capacity == 50 and len(restored) == 50
    a = buf.sample(64, torch.Generator().manual_seed(3))
    b = restored.sample(64, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    more = (torch.randn(5, 3, generator=g), torch.randn(5, generator=g))
    buf.add(*more)
    restored.add(*more)  # FIFO continues identically after the round trip
    assert all(torch.equal(u, v) for u, v in zip(buf.contents(), restored.contents()))
    assert torch.equal(buf.sample(8, torch.Generator().manual_seed(4))[0], restored.sample(8, torch.Generator().manual_seed(4))[0])
    empty = ReplayBuffer(capacity=5)
    empty.load_state_dict(ReplayBuffer(capacity=5).state_dict())
    assert len(empty) == 0


def test_bad_arguments():
    with pytest.raises(ConfigError, match="^capacity"):
        ReplayBuffer(capacity=0)
    with pytest.raises(ConfigError, match="^k"):
        ReplayBuffer(k=0.0)
    buf = ReplayBuffer(capacity=5)
    with pytest.raises(ValueError, match="empty"):
        buf.sample(3)
    buf.add(torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="dimension"):
        buf.add(torch.zeros(2, 4), torch.zeros(2))
