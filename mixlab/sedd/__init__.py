"""SEDD: Score Entropy Discrete Diffusion (Lou, Meng, Ermon, ICML 2024) for text.

Importing the package registers the `${text_vocab:root,corpus,tokenizer}` config resolver (the
vocabulary of a built corpus), which the SEDD and AR model configs use."""

import mixlab.data.text  # noqa: F401
