"""Train a mixlab system: `python train.py experiment=baseline [key=value ...]`."""

from mixlab.core.cli import hydra_entry


def task():
    from mixlab.core.pipeline import train

    return train


if __name__ == "__main__":
    hydra_entry("train", task)
