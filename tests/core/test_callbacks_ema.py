"""EMA: the update rule, the Lightning integration (checkpoint holds EMA), pickling for ddp_spawn."""

import pickle

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mixlab.callbacks.ema import EMA, EMAUpdate
from mixlab.core.errors import ArgumentError, ConfigError
from mixlab.core.pipeline import build_callbacks


class LinearDescent(L.LightningModule):
    """loss = sum(w) with SGD lr=1: after t steps w = w0 - t, so the EMA has a closed form."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.full((3,), 10.0))

    def training_step(self, batch, batch_idx):
        return self.w.sum() + 0 * batch[0].sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1.0)


def test_ema_update_rule():
    upd = EMAUpdate(0.9)
    torch.testing.assert_close(upd(torch.tensor([1.0]), torch.tensor([3.0]), 5), torch.tensor([1.2]))


def test_ema_warmup_rule():
    upd = EMAUpdate(0.999, warmup=True)
    # after 0 updates d = 1/10, after 990 updates d = min(0.999, 991/1000) = 0.991
    torch.testing.assert_close(upd(torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor(0)), torch.tensor([0.9]))
    torch.testing.assert_close(upd(torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor(990)), torch.tensor([0.009]))
    torch.testing.assert_close(upd(torch.tensor([0.0]), torch.tensor([1.0]), 10**6), torch.tensor([0.001]))


def test_ema_callback_matches_closed_form_and_is_saved_in_checkpoint(tmp_path):
    decay, steps = 0.9, 7
    ema = EMA(decay=decay)
    trainer = L.Trainer(
        max_steps=steps,
        callbacks=[ema],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    model = LinearDescent()
    trainer.fit(model, DataLoader(TensorDataset(torch.zeros(steps, 1)), batch_size=1))
    # AveragedModel copies the weights at the first update, then avg = d avg + (1 - d) w_t
    avg = 10.0 - 1
    for t in range(2, steps + 1):
        avg = decay * avg + (1 - decay) * (10.0 - t)
    trainer.save_checkpoint(tmp_path / "x.ckpt")  # after fit: weights were copied from the average
    torch.testing.assert_close(model.w.detach(), torch.full((3,), avg))
    assert avg != pytest.approx(10.0 - steps)  # the average really differs from the raw weights
    ckpt = torch.load(tmp_path / "x.ckpt", weights_only=False)
    torch.testing.assert_close(ckpt["state_dict"]["w"], torch.full((3,), avg))
    assert "current_model_state" in ckpt and "averaging_state" in ckpt


def test_ema_is_picklable_for_ddp_spawn_and_validates_decay():
    restored = pickle.loads(pickle.dumps(EMA(decay=0.999)))
    assert restored.decay == 0.999
    with pytest.raises(ArgumentError, match="^decay: must be < 1, got 1.5"):
        EMA(decay=1.5)
    from omegaconf import OmegaConf

    from mixlab.core.config import build

    node = OmegaConf.create({"callbacks": {"ema": {"_target_": "mixlab.callbacks.ema.EMA", "decay": 0}}})
    with pytest.raises(ConfigError, match="^callbacks.ema.decay: must be > 0, got 0"):
        build(node.callbacks.ema)


def test_ema_is_ordered_after_callbacks_that_sample():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {
            "ema": {"_target_": "mixlab.callbacks.ema.EMA"},
            "sample_grid": {"_target_": "mixlab.callbacks.sampling.SampleGrid"},
            "progress_bar": None,
        }
    )
    kinds = [type(cb).__name__ for cb in build_callbacks(cfg)]
    assert kinds == ["SampleGrid", "DestroyProcessGroupAtExit", "EMA"]
