"""Replay buffer: FIFO at capacity, rank-based probabilities, state_dict round trip."""

import pytest
import torch

from mixlab.core.errors import ArgumentError
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
    buf = ReplayBuffer(capacity=100, rank_k=0.01)
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
    assert torch.equal(
        buf.sample(8, torch.Generator().manual_seed(4))[0], restored.sample(8, torch.Generator().manual_seed(4))[0]
    )
    empty = ReplayBuffer(capacity=5)
    empty.load_state_dict(ReplayBuffer(capacity=5).state_dict())
    assert len(empty) == 0


def test_bad_arguments():
    with pytest.raises(ArgumentError, match="^capacity"):
        ReplayBuffer(capacity=0)
    with pytest.raises(ArgumentError, match="^rank_k"):
        ReplayBuffer(rank_k=0.0)
    buf = ReplayBuffer(capacity=5)
    with pytest.raises(ValueError, match="empty"):
        buf.sample(3)
    buf.add(torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="dimension"):
        buf.add(torch.zeros(2, 4), torch.zeros(2))


def test_reference_draws_serve_one_weighted_draw_until_used_up():
    """draws="reference": N positions drawn at once with the weights of that moment, served n at a
    time (whole batches only); entries added meanwhile are not served until the next draw, and a
    position names the (p+1)-th oldest entry when served (FIFO eviction shifts it)."""
    buf = ReplayBuffer(capacity=8, draws="reference")
    buf.add(*_batch(0, 7))  # x = insertion index, log R = -index
    g = torch.Generator().manual_seed(5)
    expected = torch.multinomial(buf.probabilities(), 6, replacement=True, generator=torch.Generator().manual_seed(5))
    first = buf.sample(3, g)[0][:, 0]
    assert first.tolist() == expected[:3].tolist()  # 7 entries -> 6 positions (two batches of 3)
    buf.add(*_batch(7, 3))  # 10 inserted: entries 0 and 1 evicted, the contents are 2..9
    second = buf.sample(3, g)[0][:, 0]
    assert second.tolist() == (expected[3:] + 2).tolist()  # the old draw, shifted by the eviction
    assert buf.cursor == 6 == len(buf.queue)
    probs = buf.probabilities()
    state = torch.Generator().manual_seed(0)
    state.set_state(g.get_state())
    third = buf.sample(3, g)[0][:, 0]  # used up: a new draw (6 positions) over entries 2..9
    redraw = torch.multinomial(probs, 6, replacement=True, generator=state)
    assert len(buf.queue) == 6 and third.tolist() == (redraw[:3] + 2).tolist()
    small = ReplayBuffer(capacity=8, draws="reference")
    small.add(*_batch(0, 2))
    assert len(small.sample(5, g)[0]) == 5 and len(small.queue) == 5  # fewer entries than a batch: one batch


def test_first_add_twice_doubles_only_the_first_batch():
    """first_add_twice (the reference buffer's quirk): the first add stores its batch twice, later
    adds and a checkpoint round trip store what they are given once."""
    buf = ReplayBuffer(capacity=10, first_add_twice=True)
    buf.add(*_batch(0, 3))
    assert len(buf) == 6 and buf.contents()[0][:, 0].tolist() == [0, 1, 2, 0, 1, 2]
    buf.add(*_batch(3, 2))
    assert buf.contents()[0][:, 0].tolist() == [0, 1, 2, 0, 1, 2, 3, 4]
    restored = ReplayBuffer()
    restored.load_state_dict(buf.state_dict())
    assert restored.first_add_twice and torch.equal(restored.contents()[0], buf.contents()[0])
    restored.add(*_batch(5, 1))
    assert len(restored) == 9
    plain = ReplayBuffer(first_add_twice=True)
    plain.load_state_dict(ReplayBuffer(capacity=10).state_dict())  # the flag comes from the checkpoint
    assert not plain.first_add_twice
    small = ReplayBuffer(capacity=4, first_add_twice=True)
    small.add(*_batch(0, 3))  # 6 rows into 4: the oldest two go
    assert small.contents()[0][:, 0].tolist() == [2, 0, 1, 2]
    with pytest.raises(ArgumentError, match="^first_add_twice"):
        ReplayBuffer(first_add_twice="yes")


def test_reference_draws_round_trip_mid_draw():
    buf = ReplayBuffer(capacity=40, draws="reference")
    g = torch.Generator().manual_seed(6)
    buf.add(torch.randn(30, 2, generator=g), torch.randn(30, generator=g))
    buf.sample(4, g)
    restored = ReplayBuffer(capacity=3)
    restored.load_state_dict(buf.state_dict())
    assert restored.draws == "reference" and restored.cursor == 4
    for _ in range(9):  # crosses the end of the 28-position draw
        a, b = buf.sample(4, torch.Generator().manual_seed(7)), restored.sample(4, torch.Generator().manual_seed(7))
        assert torch.equal(a[0], b[0])
    with pytest.raises(ArgumentError, match="^draws"):
        ReplayBuffer(draws="stale")


@pytest.mark.parametrize("capacity", [50, 1000])
def test_merged_order_gives_the_rank_weights_of_a_full_sort(capacity):
    """Adds of varied sizes with tied log R, through the ring's wrap-around: the incrementally
    merged order gives exactly the weights of ranking the whole contents again."""
    g = torch.Generator().manual_seed(0)
    buf = ReplayBuffer(capacity=capacity)
    for _ in range(40):
        n = int(torch.randint(1, 20, (1,), generator=g))
        buf.add(torch.randn(n, 2, generator=g), torch.randn(n, generator=g).round(decimals=1))
        full = rank_weights(buf.contents()[1], buf.k)
        torch.testing.assert_close(buf.probabilities(), full / full.sum(), rtol=1e-12, atol=0)
