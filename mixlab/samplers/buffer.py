"""Replay buffer of terminal states and their log R (Sendera et al. 2024, Sec. 4).

A FIFO ring of tensors (capacity 600k in the paper): once full, each add overwrites the oldest
entries. Sampling is rank-prioritised, with replacement, from an explicit generator:

    p(i) = w_i / sum_j w_j,   w_i = 1 / (k N + rank_i),   rank 0 = highest log R, k = 0.01

(ties in log R are ranked oldest first). The rank order is kept sorted by merging each add into
it (O(N) per add, no full sort per add or batch). Storage grows on demand up to the capacity (the LGCP
buffer at full capacity holds 600k x 1600 floats). `state_dict()` stores the contents oldest
first; a round trip reproduces the next batch for the same generator state.

Two draw orders (`draws`):
- "independent" (the paper's description, default): every batch is drawn with the weights of the
  current contents.
- "reference" (what the reference code's DataLoader does): one weighted draw of N = len positions
  (with replacement) is made when the previous one is used up and served n at a time (as
  `drop_last`); a position p names the (p+1)-th oldest entry *when served*, so the order lags the
  contents: a draw made at size N lasts N / n batches while the buffer keeps filling, and once the
  ring is full FIFO eviction shifts what each drawn position points at (its weight no longer
  matches).
`first_add_twice` copies the reference's other quirk: its first add inserts the batch twice (its
datasets are built from the batch and then updated with it). Off by default; with
draws="reference" it sets the phase of the lag (a first draw of 2 batches, the next one at N = 2n +
the adds in between).
"""

from typing import Literal

import torch

from mixlab.core.validate import PositiveFloat, PositiveInt, checked


def rank_weights(log_r: torch.Tensor, k: float = 0.01) -> torch.Tensor:
    """Unnormalised p_i = 1 / (k N + rank_i) [N] for log R [N]; rank 0 = highest (stable: earlier wins ties)."""
    order = torch.sort(log_r, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(len(order), device=order.device)
    return 1.0 / (k * len(log_r) + ranks.to(torch.float64))


class ReplayBuffer:
    """FIFO ring buffer of (x [d], log R) with rank-based prioritised sampling; `rank_k` is k above."""

    @checked
    def __init__(
        self,
        capacity: PositiveInt = 600_000,
        rank_k: PositiveFloat = 0.01,
        draws: Literal["independent", "reference"] = "independent",
        first_add_twice: bool = False,
    ):
        self.capacity, self.k, self.draws, self.first_add_twice = capacity, float(rank_k), draws, first_add_twice
        self.queue: torch.Tensor | None = None  # draws="reference": drawn positions (oldest = 0) not yet served
        self.cursor = 0  # next position of `queue` to serve
        self.x: torch.Tensor | None = None  # [allocated, d] storage; rows [0, size) are valid
        self.log_r: torch.Tensor | None = None  # [allocated]
        self.size, self.head = 0, 0  # number of entries; next write position (oldest entry when full)
        self._weights: torch.Tensor | None = None  # cached rank weights over the chronological contents
        # storage rows by descending log R, ties oldest first, and their log R: kept sorted by merging
        # each add into it (O(N)), so no add or batch sorts the whole buffer again
        self._order: torch.Tensor | None = None
        self._sorted: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.size

    def empty_copy(self) -> "ReplayBuffer":
        """A new empty buffer with the same settings."""
        return ReplayBuffer(self.capacity, self.k, self.draws, self.first_add_twice)

    def _chronological(self) -> torch.Tensor:
        """Storage rows of the contents, oldest first [size]."""
        start = self.head if self.size == self.capacity else 0
        return (start + torch.arange(self.size, device=self.log_r.device)) % self.capacity

    def _reserve(self, need: int, like_x: torch.Tensor) -> None:
        allocated = 0 if self.x is None else len(self.x)
        if need <= allocated:
            return
        new = min(self.capacity, max(need, 2 * allocated, 1024))
        x = like_x.new_empty(new, like_x.shape[1])
        log_r = torch.empty(new, dtype=like_x.dtype, device=like_x.device)
        if allocated:
            x[:allocated], log_r[:allocated] = self.x, self.log_r
        self.x, self.log_r = x, log_r

    def add(self, x: torch.Tensor, log_r: torch.Tensor) -> None:
        """Append x [n,d] with log R [n] (detached); beyond the capacity the oldest go first."""
        if x.ndim != 2 or log_r.shape != x.shape[:1]:
            raise ValueError(f"add: expected x [n,d] and log_r [n], got {tuple(x.shape)} and {tuple(log_r.shape)}")
        if self.x is not None and x.shape[1] != self.x.shape[1]:
            raise ValueError(f"add: dimension {x.shape[1]} differs from the buffer's {self.x.shape[1]}")
        if self.first_add_twice and self.size == 0 and len(x):
            x, log_r = torch.cat([x, x]), torch.cat([log_r, log_r])
        x, log_r = x.detach()[-self.capacity :], log_r.detach()[-self.capacity :]
        n = len(x)
        if n == 0:
            return
        self._reserve(min(self.capacity, self.size + n), x)
        rows = (self.head + torch.arange(n, device=self.x.device)) % self.capacity
        self._forget(rows)  # entries about to be overwritten (a full ring) leave the order first
        self.x[rows] = x.to(self.x)
        self.log_r[rows] = log_r.to(self.log_r)
        self.head = (self.head + n) % self.capacity
        self.size = min(self.capacity, self.size + n)
        self._merge(rows)
        self._weights = None

    def _forget(self, rows: torch.Tensor) -> None:
        if self._order is None or self.size + len(rows) <= self.capacity:
            return
        gone = torch.zeros(len(self.x), dtype=torch.bool, device=self.x.device)
        gone[rows] = True
        keep = ~gone[self._order]
        self._order, self._sorted = self._order[keep], self._sorted[keep]

    def _merge(self, rows: torch.Tensor) -> None:
        """Insert the new rows (the newest entries, in chronological order) into the sorted order:
        after every entry of equal log R (older wins ties), among themselves by a stable sort."""
        vals, perm = torch.sort(self.log_r[rows], descending=True, stable=True)
        new_rows = rows[perm]
        if self._order is None or len(self._order) == 0:
            self._order, self._sorted = new_rows, vals
            return
        if torch.isnan(vals).any() or torch.isnan(self._sorted[:1]).any():  # NaN: no order to merge into
            chrono = self._chronological()
            self._sorted, idx = torch.sort(self.log_r[chrono], descending=True, stable=True)
            self._order = chrono[idx]
            return
        pos = torch.searchsorted(-self._sorted, -vals, right=True)  # ascending view of the descending order
        total = len(self._order) + len(rows)
        at = pos + torch.arange(len(rows), device=pos.device)
        is_new = torch.zeros(total, dtype=torch.bool, device=pos.device)
        is_new[at] = True
        order = self._order.new_empty(total)
        order[at], order[~is_new] = new_rows, self._order
        ranked = self._sorted.new_empty(total)
        ranked[at], ranked[~is_new] = vals, self._sorted
        self._order, self._sorted = order, ranked

    def contents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x [size,d], log R [size]), oldest first."""
        if self.size == 0:
            raise ValueError("the replay buffer is empty")
        rows = self._chronological()
        return self.x[rows], self.log_r[rows]

    def probabilities(self) -> torch.Tensor:
        """Sampling probabilities [size] of the contents, oldest first (float64)."""
        if self._weights is None:
            if self.size == 0:
                raise ValueError("the replay buffer is empty")
            # the rank weights 1 / (k N + rank) placed at each entry's chronological position
            start = self.head if self.size == self.capacity else 0
            ranks = torch.arange(self.size, device=self.log_r.device, dtype=torch.float64)
            weights = torch.empty(self.size, dtype=torch.float64, device=self.log_r.device)
            weights[(self._order - start) % self.capacity] = 1.0 / (self.k * self.size + ranks)
            self._weights = weights
        return self._weights / self._weights.sum()

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n draws with replacement, p ∝ 1/(k N + rank): (x [n,d], log R [n]); `generator` on the storage device."""
        if self.draws == "independent":
            chosen = torch.multinomial(self.probabilities(), n, replacement=True, generator=generator)
        else:
            if self.queue is None or self.cursor + n > len(self.queue):
                m = max(n, self.size - self.size % n)  # whole batches of the N positions (drop_last)
                self.queue = torch.multinomial(self.probabilities(), m, replacement=True, generator=generator)
                self.cursor = 0
            chosen = self.queue[self.cursor : self.cursor + n]
            self.cursor += n
        rows = self._chronological()[chosen]
        return self.x[rows], self.log_r[rows]

    def to(self, device) -> "ReplayBuffer":
        """Move the storage (e.g. after loading a checkpoint on the CPU)."""
        if self.x is not None:
            self.x, self.log_r = self.x.to(device), self.log_r.to(device)
        if self.queue is not None:
            self.queue = self.queue.to(device)
        if self._order is not None:
            self._order, self._sorted = self._order.to(device), self._sorted.to(device)
        self._weights = None
        return self

    def state_dict(self) -> dict:
        x, log_r = self.contents() if self.size else (None, None)
        return {
            "capacity": self.capacity,
            "k": self.k,
            "x": x,
            "log_r": log_r,
            "draws": self.draws,
            "first_add_twice": self.first_add_twice,
            "queue": self.queue,
            "cursor": self.cursor,
        }

    def load_state_dict(self, state: dict) -> None:
        self.__init__(int(state["capacity"]), float(state["k"]), state.get("draws", self.draws))
        if state["x"] is not None:
            self.add(state["x"], state["log_r"])  # the stored contents, once (first_add_twice is off here)
        self.first_add_twice = bool(state.get("first_add_twice", False))
        self.queue, self.cursor = state.get("queue"), int(state.get("cursor", 0))
