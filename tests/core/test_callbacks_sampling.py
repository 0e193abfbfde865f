"""SampleGrid: epoch or step cadence, images as PNG grids, text as .txt files (rank 0)."""

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from mixlab.callbacks.sampling import SEPARATOR, SampleGrid
from mixlab.core.system import MixlabSystem


class Sampler(MixlabSystem):
    """A linear model that 'samples' text or images: records the calls it got."""

    def __init__(self, text: bool):
        super().__init__()
        self.w, self.text, self.calls = torch.nn.Parameter(torch.zeros(1)), text, []

    def training_step(self, batch, batch_idx):
        return (self.w - batch[0].mean()) ** 2

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", (self.w - batch[0].mean()) ** 2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def sample_sets(self):
        return {"": {}, "other": {"tag": "o"}}

    def sample(self, n, generator=None, tag="d", **options):
        self.calls.append((self.trainer.global_step, tag, options))
        if self.text:
            return [f"{tag} sample {i} at step {self.trainer.global_step}" for i in range(n)]
        return torch.rand(n, 1, 4, 4, generator=generator) * 2 - 1


def fit(tmp_path, text: bool, **grid):
    module = Sampler(text)
    loader = DataLoader(TensorDataset(torch.randn(40, 1)), batch_size=4)
    trainer = L.Trainer(
        max_steps=25,
        val_check_interval=5,
        check_val_every_n_epoch=None,
        limit_val_batches=1,
        logger=False,
        callbacks=[SampleGrid(num_samples=3, **grid)],
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(module, loader, loader)
    return module


def test_step_cadence_writes_text_files(tmp_path):
    module = fit(tmp_path, text=True, every_n_steps=10, steps=7)
    assert [(s, tag) for s, tag, _ in module.calls] == [(10, "d"), (10, "o"), (20, "d"), (20, "o"), (25, "d"), (25, "o")]
    assert all(options == {"steps": 7} for _, _, options in module.calls)  # the system's sample options pass through
    files = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert files == [
        "step_0000010.txt",
        "step_0000010_other.txt",
        "step_0000020.txt",
        "step_0000020_other.txt",
        "step_0000025.txt",
        "step_0000025_other.txt",
    ]
    texts = (tmp_path / "samples" / "step_0000020_other.txt").read_text().strip().split(SEPARATOR)
    assert texts == [f"o sample {i} at step 20" for i in range(3)]


def test_epoch_cadence_writes_image_grids(tmp_path):
    fit(tmp_path, text=False, every_n_epochs=1)  # 10 batches per epoch: epochs end at steps 10, 20 and the last at 25
    files = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert files == [
        "epoch_0000.png",
        "epoch_0000_other.png",
        "epoch_0001.png",
        "epoch_0001_other.png",
        "epoch_0002.png",
        "epoch_0002_other.png",
    ]


def test_progress_bar_label_for_epoch_and_step_counted_runs():
    from mixlab.callbacks.progress import epoch_label

    assert epoch_label(3, 10, -1) == "Epoch 3/9"
    assert epoch_label(0, -1, 1800) == "Epoch 0 (of 1800 steps)"  # Lightning would print "Epoch 0/-2"
    assert epoch_label(2, None, None) == "Epoch 2"
