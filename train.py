"""Train a mixlab system: `python train.py experiment=baseline [key=value ...]`."""

from mixlab.core.cli import train_main

if __name__ == "__main__":
    train_main()
