"""Image classifiers: the per-subset CNN (`ImageClassifier`) and the multi-task MoE
(`MoEClassifierSystem`, mixlab.moe.system). Accuracy via torchmetrics."""

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from mixlab.core.errors import ConfigError
from mixlab.core.system import MixlabSystem
from mixlab.core.validate import PositiveInt, checked
from mixlab.nets.global_batchnorm import global_batchnorm


class ImageClassifier(MixlabSystem):
    """CE training of `net` (x -> logits [B,C]); logs {train,val,test}/loss, /acc and
    /acc_class/<name> (per-class accuracy, class names from the datamodule). A class with no
    sample in the evaluated split has no accuracy: its key is not logged (an empty cell in the
    CSV, no point in wandb), and a warning names it once per split."""

    evaluator = "classifier"

    @checked
    def __init__(self, net: nn.Module, optimizer: Callable, num_classes: PositiveInt, seed: int = 0, compile: bool = False):
        super().__init__(seed=seed, compile=compile)
        # BatchNorm over the global batch under DDP (N processes = 1 process); plain BatchNorm otherwise
        self.net, self.optimizer_factory, self.num_classes = global_batchnorm(net), optimizer, int(num_classes)
        self.class_names: list[str] = [str(c) for c in range(self.num_classes)]
        for split in ("val", "test"):
            setattr(self, f"{split}_acc", MulticlassAccuracy(self.num_classes, average="micro"))
            setattr(self, f"{split}_confusion", MulticlassConfusionMatrix(self.num_classes))  # rows: true class
        self.confusion: dict[str, torch.Tensor] = {}  # the latest confusion matrix of each split (counts, all ranks)
        self._absent_warned: set[str] = set()

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        names: Sequence[str] | None = getattr(dm, "class_names", None)
        if names is not None:
            if len(names) != self.num_classes:
                raise ConfigError(
                    self.config_key("num_classes"),
                    f"is {self.num_classes} but the data has {len(names)} classes ({', '.join(names)})",
                )
            self.class_names = list(names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def compiled_modules(self) -> list[nn.Module]:
        return [self.net]

    def training_step(self, batch, batch_idx: int):
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        self.check_finite(loss)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("train/acc", (logits.argmax(1) == y).float().mean(), on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def _eval_step(self, batch, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self(x)
        if isinstance(logits, tuple):
            logits = logits[0]
        self.log(f"{split}/loss", F.cross_entropy(logits, y), on_epoch=True, sync_dist=True)
        getattr(self, f"{split}_acc").update(logits, y)
        getattr(self, f"{split}_confusion").update(logits, y)
        return logits, y

    def validation_step(self, batch, batch_idx: int):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx: int):
        self._eval_step(batch, "test")

    def _log_accuracy(self, split: str) -> None:
        acc, confusion = getattr(self, f"{split}_acc"), getattr(self, f"{split}_confusion")
        self.log(f"{split}/acc", acc.compute(), prog_bar=split == "val")
        matrix = confusion.compute()  # summed over ranks: the same on every rank
        support = matrix.sum(1)
        for c, name in enumerate(self.class_names):
            if support[c] > 0:
                self.log(f"{split}/acc_class/{name}", matrix[c, c] / support[c])
        self.confusion[split] = matrix.cpu()
        absent = [name for c, name in enumerate(self.class_names) if support[c] == 0]
        if absent and split not in self._absent_warned and not (self._trainer is not None and self.trainer.sanity_checking):
            self._absent_warned.add(split)
            rank_zero_warn(
                f"[mixlab] the {split} split has no sample of {len(absent)} class(es): {', '.join(absent)}; "
                "their per-class accuracy and gate statistics are not logged"
            )
        acc.reset()
        confusion.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_accuracy("val")

    def on_test_epoch_end(self) -> None:
        self._log_accuracy("test")

    def configure_optimizers(self):
        return self.optimizer_factory(self.parameters())
