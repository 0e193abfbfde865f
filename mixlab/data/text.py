"""Text as a LightningDataModule: fixed-length blocks of token ids from the corpus files.

Batches are int64 ``[micro_batch, length]`` LongTensors: non-overlapping ``length``-token
blocks of a split's token stream (``mixlab.data.text_corpora``; documents joined with EOS, the
tail that fills no block dropped). ``data.batch_size`` is the global batch of one optimizer
step, split over devices x accumulation steps.

* train: every epoch a permutation of the blocks (seed + epoch, the same on every rank); the
  first ``floor(n / batch_size) * batch_size`` positions are used, rank r of W takes positions
  r, r + W, ... so N devices x A accumulation steps see exactly one device's batches. The
  loader is resumable mid-epoch: Lightning stores its ``state_dict`` in checkpoints.
* val / test: blocks in file order, rank r of W takes blocks r, r + W, ... (no duplicates; the
  last batch may be partial, and ranks may have one batch fewer than others: sum over ranks
  at the end of the epoch, never all-reduce per step).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset, Sampler

from mixlab.core.errors import ArgumentError, ConfigError, DataNotFoundError
from mixlab.core.network import internet_reachable
from mixlab.core.validate import NonNegativeInt, PositiveInt, checked
from mixlab.data.base import GlobalBatchDataModule
from mixlab.data.corpora import find_corpus, make_hint
from mixlab.data.text_corpora import build_corpus, check_split, corpus_dir, load_tokenizer, read_meta, read_tokens
from mixlab.data.text_tokenizers import check_tokenizer_name


class TokenBlocks(Dataset):
    """Block i = tokens[i*length : (i+1)*length] of a uint16 token file, as int64 [length].
    ``limit`` keeps that many blocks spread evenly over the file (block i starts at block
    floor(i * total / limit)), so a subset covers every document of a split. The memmap opens
    lazily in each process."""

    def __init__(self, path: str | os.PathLike, length: int, limit: int | None = None):
        self.path, self.length = str(path), int(length)
        self.num_tokens = os.path.getsize(self.path) // np.dtype(np.uint16).itemsize
        self.total_blocks = self.num_tokens // self.length
        self.num_blocks = self.total_blocks if limit is None else min(limit, self.total_blocks)
        self._tokens, self._pid = None, None

    def tokens(self) -> np.memmap:
        if self._tokens is None or self._pid != os.getpid():
            self._tokens, self._pid = read_tokens(self.path), os.getpid()
        return self._tokens

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < self.num_blocks:
            raise IndexError(f"block {i} of {self.num_blocks}")
        start = i * self.total_blocks // self.num_blocks * self.length
        return torch.from_numpy(self.tokens()[start : start + self.length].astype(np.int64))

    def __getstate__(self) -> dict:  # workers reopen the memmap
        return {**self.__dict__, "_tokens": None, "_pid": None}


class ShuffledBlockSampler(Sampler[int]):
    """This rank's share of an epoch's block order, from global position ``start`` on.

    The order is ``randperm(n)`` seeded with seed + epoch, cut to
    ``floor(n / global_batch) * global_batch`` positions so that every rank and accumulation
    step gets whole micro-batches; rank r of W takes positions r, r + W, ... of it.
    ``__len__`` is the whole epoch's share (Lightning counts batches already done itself)."""

    def __init__(self, n: int, global_batch: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.n, self.global_batch, self.seed = int(n), int(global_batch), int(seed)
        self.rank, self.world_size, self.epoch, self.start = int(rank), int(world_size), 0, 0
        self.usable = (self.n // self.global_batch) * self.global_batch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_order(self) -> torch.Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))[: self.usable]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_order()[self.start :][self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return self.usable // self.world_size


class ResumableBlockLoader(DataLoader):
    """The train loader: a DataLoader over a ``ShuffledBlockSampler`` with ``state_dict`` /
    ``load_state_dict``, which Lightning saves in (and restores from) checkpoints, so a run
    resumed from a mid-epoch checkpoint continues with the next unseen batch.

    State: the epoch and the global position reached in its order (micro-batches yielded x
    micro-batch x world size). Iteration starts lazily at the first ``next()``, after
    Lightning's ``set_epoch``; a restored position applies only to the epoch it was saved in."""

    def __init__(self, dataset: TokenBlocks, sampler: ShuffledBlockSampler, batch_size: int, **kwargs):
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, **kwargs)
        self._epoch, self._position, self._pending = 0, 0, None

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self._iterate()

    def _iterate(self) -> Iterator[torch.Tensor]:
        sampler: ShuffledBlockSampler = self.sampler
        pending, self._pending = self._pending, None
        start = pending["position"] if pending is not None and pending["epoch"] == sampler.epoch else 0
        sampler.start, self._epoch, self._position = start, sampler.epoch, start
        step = self.batch_size * sampler.world_size
        for batch in super().__iter__():
            self._position += step
            yield batch

    def state_dict(self) -> dict:
        if self._pending is not None:  # restored, not iterated yet
            return dict(self._pending)
        sampler: ShuffledBlockSampler = self.sampler
        return {"epoch": self._epoch, "position": self._position, "blocks": sampler.n, "seed": sampler.seed}

    def load_state_dict(self, state: dict) -> None:
        sampler: ShuffledBlockSampler = self.sampler
        if (state.get("blocks"), state.get("seed")) != (sampler.n, sampler.seed):
            rank_zero_warn(f"[mixlab] the checkpoint's train order ({state.get('blocks')} blocks, seed "
                           f"{state.get('seed')}) differs from this run's ({sampler.n} blocks, seed {sampler.seed}): "
                           "the resumed epoch starts from its first batch")
            return
        step = self.batch_size * sampler.world_size
        position = min(int(state["position"]), sampler.usable)
        if position % step:
            rank_zero_warn(f"[mixlab] resumed train position {position} is not a multiple of this run's "
                           f"micro-batch x world size ({step}); a few blocks are seen twice")
            position -= position % step
        self._pending = {"epoch": int(state["epoch"]), "position": position, "blocks": sampler.n, "seed": sampler.seed}
        sampler.set_epoch(int(state["epoch"]))


class ShardedSequentialSampler(Sampler[int]):
    """Blocks 0..n-1 in order, rank r of W taking r, r + W, ...: no duplicates, none dropped."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        self.n, self.rank, self.world_size = int(n), int(rank), int(world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


class TextDataModule(GlobalBatchDataModule):
    """Blocks of ``length`` tokens from ``<root>/text/<corpus>-<tokenizer>`` (train split) and
    from ``eval_corpus`` (default: the same corpus) for val / test.

    ``vocab_size`` (token ids incl. EOS, no MASK), ``eos_id`` and ``tokenizer`` (``encode`` /
    ``decode``) come from the corpus's meta.json, readable once the corpus is built."""

    @checked
    def __init__(self, root: str | Path = "data", corpus: str = "classics", tokenizer: str = "char",
                 length: PositiveInt = 256, batch_size: PositiveInt = 64, num_workers: NonNegativeInt = 0, seed: int = 0,
                 train_limit: PositiveInt | None = None, val_limit: PositiveInt | None = None,
                 test_limit: PositiveInt | None = None, eval_corpus: str | None = None, val_split: str = "val",
                 test_split: str = "test", download: bool = True, pin_memory: bool = False):
        super().__init__(batch_size)
        self.spec = find_corpus(corpus, "corpus")
        self.eval_spec = find_corpus(eval_corpus or corpus, "eval_corpus")
        check_tokenizer_name(tokenizer)
        if "train" not in self.spec.splits:
            raise ArgumentError("corpus", f"corpus '{corpus}' has no train split (only {', '.join(self.spec.splits)}); "
                                          "train on another corpus and set data.eval_corpus")
        for arg, split in (("val_split", val_split), ("test_split", test_split)):
            if split not in self.eval_spec.splits:
                raise ArgumentError(arg, f"corpus '{self.eval_spec.name}' has no '{split}' split "
                                         f"(it has {', '.join(self.eval_spec.splits)})")
        self.root, self.corpus, self.eval_corpus = root, corpus, eval_corpus or corpus
        self.tokenizer_name, self.length, self.num_workers, self.seed = tokenizer, length, num_workers, seed
        self.limits = {"train": train_limit, "val": val_limit, "test": test_limit}
        self.val_split, self.test_split, self.download, self.pin_memory = val_split, test_split, download, pin_memory
        self._blocks: dict[str, TokenBlocks] = {}
        self._tokenizer = None

    # ------------------------------------------------------------------ corpus and tokenizer
    @property
    def corpus_dir(self):
        return corpus_dir(self.root, self.corpus, self.tokenizer_name)

    @property
    def eval_corpus_dir(self):
        return corpus_dir(self.root, self.eval_corpus, self.tokenizer_name)

    @property
    def meta(self) -> dict:
        """The train corpus's meta.json (DataNotFoundError naming `make data-text` when absent)."""
        self._require(self.corpus)
        return read_meta(self.corpus_dir)

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def eos_id(self) -> int:
        return int(self.meta["eos_id"])

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.meta, self.root)
        return self._tokenizer

    @property
    def provenance(self) -> str:
        return (self.corpus_dir / "SOURCE.txt").read_text().strip()

    def _require(self, corpus: str) -> None:
        folder = corpus_dir(self.root, corpus, self.tokenizer_name)
        if not (folder / "meta.json").is_file():
            raise DataNotFoundError(f"text corpus '{corpus}' ({self.tokenizer_name}) not found under {folder}. "
                                    + make_hint(corpus, self.tokenizer_name, self.root))

    def prepare_data(self) -> None:
        """One process per node: builds a missing online corpus when its source is reachable."""
        for spec in {self.corpus: self.spec, self.eval_corpus: self.eval_spec}.values():
            missing = not (corpus_dir(self.root, spec.name, self.tokenizer_name) / "meta.json").is_file()
            if missing and spec.online and self.download and internet_reachable(*spec.host):
                build_corpus(spec.name, [self.tokenizer_name], self.root, spec=spec)
            self._require(spec.name)

    # ------------------------------------------------------------------------------- blocks
    def blocks(self, role: str) -> TokenBlocks:
        """The ``length``-token blocks for ``role`` ("train" | "val" | "test"): the train split of
        ``corpus``, or ``val_split`` / ``test_split`` of ``eval_corpus``; ``<role>_limit`` blocks spread over it.
        The split file is checked first (a damaged one is one line naming it and `make data-text`)."""
        if role not in self._blocks:
            corpus, split = {"train": (self.corpus, "train"), "val": (self.eval_corpus, self.val_split),
                             "test": (self.eval_corpus, self.test_split)}[role]
            self._require(corpus)
            path = check_split(self.root, corpus, self.tokenizer_name, split)  # size and checksum vs its manifest
            blocks = TokenBlocks(path, self.length, self.limits[role])
            if len(blocks) == 0:
                raise ConfigError("data.length", f"a block of {self.length} tokens is longer than the {split} split of "
                                                 f"{corpus} ({blocks.num_tokens} tokens)")
            self._blocks[role] = blocks
        return self._blocks[role]

    def _check_eval_vocabulary(self) -> None:
        if self.eval_corpus == self.corpus:
            return
        self._require(self.eval_corpus)
        train, other = self.meta, read_meta(self.eval_corpus_dir)
        fields = ("vocab_size", "eos_id", "chars")
        if any(train.get(f) != other.get(f) for f in fields):
            raise ConfigError("data.eval_corpus", f"'{self.eval_corpus}' was tokenised with another vocabulary than "
                                                  f"'{self.corpus}' (char vocabularies differ per corpus: use tokenizer gpt2)")

    def setup(self, stage: str | None = None) -> None:
        self.bind_trainer()
        for role in {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, ("train", "val")):
            self.blocks(role)
        if stage in (None, "fit"):
            n_train = len(self.blocks("train"))
            if self.batch_size > n_train:
                raise ConfigError("data.batch_size", f"global batch size {self.batch_size} exceeds the {n_train} training "
                                                     f"blocks of {self.length} tokens (lower data.batch_size or data.length)")
        self._check_eval_vocabulary()

    # -------------------------------------------------------------------------- dataloaders
    def _loader_kwargs(self) -> dict:
        return {"num_workers": self.num_workers, "pin_memory": self.pin_memory, "persistent_workers": self.num_workers > 0,
                # own generator: starting an iterator must not draw from the global RNG
                "generator": torch.Generator().manual_seed(self.seed)}

    def train_dataloader(self) -> ResumableBlockLoader:
        blocks = self.blocks("train")
        sampler = ShuffledBlockSampler(len(blocks), self.batch_size, self.seed, rank=self.rank, world_size=self.world_size)
        return ResumableBlockLoader(blocks, sampler, self.per_device_batch_size, **self._loader_kwargs())

    def _eval_loader(self, role: str) -> DataLoader:
        blocks = self.blocks(role)
        sampler = ShardedSequentialSampler(len(blocks), self.rank, self.world_size)
        return DataLoader(blocks, batch_size=self.per_device_batch_size, sampler=sampler, drop_last=False,
                          **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")


def text_vocab_size(root: str, corpus: str, tokenizer: str) -> int | None:
    """The token ids of a built corpus (meta.json), or None when it is not built yet (the system
    that asks then names `make data-text`). Registered as the config resolver `${text_vocab:...}`."""
    folder = corpus_dir(root, corpus, tokenizer)
    return int(read_meta(folder)["vocab_size"]) if (folder / "meta.json").is_file() else None


OmegaConf.register_new_resolver("text_vocab", text_vocab_size, replace=True)
