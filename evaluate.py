"""Evaluate a checkpoint with its system's evaluator: `python evaluate.py ckpt=PATH [options]`."""

from mixlab.core.cli import evaluate_main

if __name__ == "__main__":
    evaluate_main()
