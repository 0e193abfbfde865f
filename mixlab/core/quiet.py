"""Keep a normal run's output to what the user needs: no Lightning advertising tips, no
deprecation warnings raised inside Lightning about its own internals, and each Lightning info
line printed once (Lightning's own handler; Hydra's root handler would print it a second time).
No accelerator banner (`GPU available: ...`, `TPU available: ...`), no warning that the checkpoint
directory is not empty on resume (the run dir is ours), no `Received SIGTERM` (the run prints its
own line on a signal). Each filter matches one known message where it is raised; nothing else is
silenced."""

import logging
import warnings

DROPPED = ("💡 Tip", "GPU available: ", "TPU available: ", "HPU available: ", "Received SIGTERM: ")


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not any(text in message for text in DROPPED)


def quiet_lightning() -> None:
    import lightning.pytorch  # noqa: F401  (imported before Hydra configures logging: Lightning keeps its own handler)

    # lightning/pytorch/utilities/_pytree.py, on every fit with torch >= 2.14
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", module=r"lightning\.pytorch\.utilities\._pytree"
    )
    # lightning/pytorch/trainer/connectors/data_connector.py: we set num_workers on purpose (in-memory tensors)
    warnings.filterwarnings(
        "ignore",
        message=r"The '\w+_dataloader' does not have many workers",
        module=r"lightning\.pytorch\.trainer\.connectors\.data_connector",
    )
    # lightning/pytorch/callbacks/model_checkpoint.py, on every resume into the run dir's checkpoints/
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        if logger.handlers:
            logger.propagate = False
        for handler in logger.handlers:  # Lightning's own stream handler prints the lines once
            if not any(isinstance(f, _DropTips) for f in handler.filters):
                handler.addFilter(_DropTips())
