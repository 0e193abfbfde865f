"""Evaluate a checkpoint: `python evaluate.py ckpt=PATH [n=2048 solver=heun steps=20]`."""

from mixlab.core.cli import hydra_entry


def task():
    from mixlab.score.evaluate import evaluate

    return evaluate


if __name__ == "__main__":
    hydra_entry("eval", task)
