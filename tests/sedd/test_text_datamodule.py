"""TextDataModule on tiny corpora written by the tests: [b, length] LongTensors, N devices x A
accumulation steps reproduce one device, val/test sharded without duplicates, mid-epoch resume
(loader state and a real Trainer), and the configuration errors."""

import types

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from sedd_text_helpers import BatchRecorder, write_tiny_corpus

from mixlab.core.errors import ConfigError
from mixlab.data.text import ResumableBlockLoader, TextDataModule
from mixlab.data.text_corpora import corpus_dir, read_tokens


@pytest.fixture
def corpus_root(tmp_path):
    write_tiny_corpus(tmp_path)  # classics-char: 40 / 6 / 5 documents of ~250 characters
    return tmp_path


def on_rank(dm, world=1, rank=0, accumulate=1, stage="fit"):
    """What setup() reads from a Trainer, for rank `rank` of `world` with `accumulate` steps."""
    dm.trainer = types.SimpleNamespace(world_size=world, global_rank=rank, accumulate_grad_batches=accumulate)
    dm.setup(stage)
    return dm


def blocks_of(root, split, length):
    tokens = torch.from_numpy(read_tokens(corpus_dir(root, "classics", "char") / f"{split}.bin").astype("int64"))
    return tokens[: len(tokens) // length * length].view(-1, length)


def test_batches_are_long_blocks_of_the_token_stream(corpus_root):
    dm = on_rank(TextDataModule(root=corpus_root, length=32, batch_size=8, seed=3))
    assert (dm.vocab_size, dm.eos_id) == (len(dm.meta["chars"]) + 1, len(dm.meta["chars"]))
    batches = list(dm.train_dataloader())
    assert all(b.dtype == torch.int64 and b.shape == (8, 32) for b in batches)
    everything = blocks_of(corpus_root, "train", 32)
    assert len(batches) == len(everything) // 8
    seen = torch.cat(batches)
    assert len({tuple(r) for r in seen.tolist()}) == len(seen)  # non-overlapping, no block twice
    assert {tuple(r) for r in seen.tolist()} <= {tuple(r) for r in everything.tolist()}
    assert "train0: " in dm.tokenizer.decode(everything[0].tolist())
    epoch0 = torch.cat(list(dm.train_dataloader()))
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(1)
    assert torch.equal(seen, epoch0) and not torch.equal(torch.cat(list(loader)), epoch0)  # reshuffled per epoch


def test_two_devices_times_two_accumulation_steps_reproduce_one_device(corpus_root):
    single = list(on_rank(TextDataModule(root=corpus_root, length=16, batch_size=8, seed=1)).train_dataloader())
    ranks = []
    for rank in range(2):
        dm = on_rank(TextDataModule(root=corpus_root, length=16, batch_size=8, seed=1), world=2, rank=rank, accumulate=2)
        assert dm.per_device_batch_size == 2
        ranks.append(list(dm.train_dataloader()))
    assert all(b.shape == (2, 16) for r in ranks for b in r) and len(ranks[0]) == len(ranks[1]) == 2 * len(single)
    for step, batch in enumerate(single):
        for rank in range(2):  # rank r's two micro-batches = global positions r, r + 2, ... of the step
            assert torch.equal(torch.cat(ranks[rank][2 * step : 2 * step + 2]), batch[rank::2])


def spread(blocks: torch.Tensor, n: int) -> torch.Tensor:
    """What a limit of n keeps: n blocks evenly spaced over the split."""
    return blocks[[i * len(blocks) // n for i in range(n)]]


def test_val_and_test_are_sharded_over_ranks_without_duplicates(corpus_root):
    for role in ("val", "test"):
        everything = spread(blocks_of(corpus_root, role, 16), 29)  # 29 blocks: rank 1's last batch is partial
        shards = []
        for rank in range(2):
            dm = TextDataModule(root=corpus_root, length=16, batch_size=6, val_limit=29, test_limit=29)
            on_rank(dm, world=2, rank=rank, stage="validate" if role == "val" else "test")
            batches = list(dm.val_dataloader() if role == "val" else dm.test_dataloader())
            assert [len(b) for b in batches] == ([3] * 5 if rank == 0 else [3] * 4 + [2])
            shards.append(torch.cat(batches))
        assert torch.equal(shards[0], everything[0::2]) and torch.equal(shards[1], everything[1::2])
    limited = on_rank(TextDataModule(root=corpus_root, length=16, batch_size=4, val_limit=5), stage="validate")
    assert torch.equal(torch.cat(list(limited.val_dataloader())), spread(blocks_of(corpus_root, "val", 16), 5))


def test_configuration_errors_name_the_key(corpus_root):
    with pytest.raises(ConfigError, match=r"^data\.length: a block of 100000 tokens is longer than the train split"):
        on_rank(TextDataModule(root=corpus_root, length=100_000, batch_size=8))
    with pytest.raises(ConfigError, match=r"^data\.batch_size: global batch size 6 is not divisible by 4 devices"):
        on_rank(TextDataModule(root=corpus_root, length=32, batch_size=6), world=4)
    with pytest.raises(ConfigError, match=r"^data\.batch_size: global batch size 4096 exceeds the \d+ training blocks"):
        on_rank(TextDataModule(root=corpus_root, length=32, batch_size=4096))
    write_tiny_corpus(corpus_root, corpus="wikitext2", sizes={"train": 4, "val": 40, "test": 4}, seed=7)
    with pytest.raises(ConfigError, match=r"^data\.eval_corpus: 'wikitext2' was tokenised with another vocabulary"):
        on_rank(TextDataModule(root=corpus_root, length=32, batch_size=8, eval_corpus="wikitext2"))


def test_the_loader_leaves_the_global_rng_alone(corpus_root):
    dm = on_rank(TextDataModule(root=corpus_root, length=32, batch_size=8))
    torch.manual_seed(0)
    state = torch.get_rng_state()
    next(iter(dm.train_dataloader()))
    assert torch.equal(torch.get_rng_state(), state)


def test_loader_state_resumes_mid_epoch(corpus_root):
    def loader(world=1, rank=0, batch=8):
        return on_rank(TextDataModule(root=corpus_root, length=16, batch_size=batch, seed=5), world, rank).train_dataloader()

    first = loader()
    assert isinstance(first, ResumableBlockLoader)
    first.sampler.set_epoch(2)
    full = list(first)
    it = iter(first)
    head = [next(it) for _ in range(3)]
    state = first.state_dict()
    assert state["epoch"] == 2 and state["position"] == 3 * 8
    resumed = loader()
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state  # restored, not iterated yet
    resumed.sampler.set_epoch(2)  # what Lightning does after loading the state
    assert torch.equal(torch.cat(head + list(resumed)), torch.cat(full))
    assert torch.equal(torch.cat(list(resumed)), torch.cat(full))  # the next pass starts the epoch again
    other_epoch = loader()
    other_epoch.load_state_dict(state)
    other_epoch.sampler.set_epoch(3)  # the saved position belonged to epoch 2: epoch 3 starts at 0
    assert len(list(other_epoch)) == len(full)
    two = [loader(world=2, rank=r, batch=8) for r in range(2)]  # resumed on 2 devices (global batch kept)
    for part in two:
        part.load_state_dict(state)
        part.sampler.set_epoch(2)
    rest = [list(p) for p in two]
    for j, batch in enumerate(full[3:]):
        assert torch.equal(torch.cat([rest[0][j], rest[1][j]]).sort(0).values, batch.sort(0).values)


def fit_recording(root, tmp_path, ckpt_path=None, accumulate=1, every=None, tag="run"):
    dm = TextDataModule(root=root, length=16, batch_size=4, seed=11)
    model = BatchRecorder()
    callbacks = (
        [ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{step}", every_n_train_steps=every, save_top_k=-1, save_last=False)]
        if every
        else []
    )
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=2,
        accumulate_grad_batches=accumulate,
        use_distributed_sampler=False,
        enable_checkpointing=bool(every),
        callbacks=callbacks,
        default_root_dir=tmp_path / tag,
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model.seen


@pytest.mark.parametrize("accumulate", [1, 2])
def test_trainer_resumes_mid_epoch_with_the_next_unseen_batch(corpus_root, tmp_path, accumulate):
    """Checkpoints written mid-epoch (epoch 0 and epoch 1) by ModelCheckpoint(every_n_train_steps):
    the batches before the checkpoint + those of a new Trainer resumed from it = the whole run."""
    full = fit_recording(corpus_root, tmp_path, accumulate=accumulate, every=3)
    steps_per_epoch = len(blocks_of(corpus_root, "train", 16)) // 4  # optimizer steps of global batch 4
    assert len(full) == 2 * steps_per_epoch * accumulate and steps_per_epoch > 6
    for step in (3, steps_per_epoch + 3):  # mid-epoch 0, mid-epoch 1
        resumed = fit_recording(
            corpus_root, tmp_path, ckpt_path=tmp_path / "ckpt" / f"step={step}.ckpt", tag=f"r{step}", accumulate=accumulate
        )
        seen = step * accumulate
        assert len(resumed) == len(full) - seen
        assert torch.equal(torch.cat(full[:seen] + resumed), torch.cat(full))
