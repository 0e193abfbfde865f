"""`make sampler-reference` (python -m tools.samplers.reference): the W2 reference rows, i.e. W2
between two independent exact sample sets of 25GMM, Funnel and Manywell-32, and the mode-dropping
controls (Manywell-32 deep wells only, 25GMM without one corner mode). Under a minute on a CPU."""

import argparse

from mixlab.samplers.metrics import reference_w2_rows


def main(argv: list[str] | None = None) -> list:
    parser = argparse.ArgumentParser(prog="python -m tools.samplers.reference", description=__doc__)
    parser.add_argument("--n", type=int, default=2000, help="samples in each set (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..SEEDS-1, mean ± std over them (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.n < 2 or args.seeds < 1:
        parser.error(f"--n must be >= 2 and --seeds >= 1, got --n {args.n} --seeds {args.seeds}")
    rows = reference_w2_rows(args.n, range(args.seeds))
    for row in rows:
        print(row)
    return rows


if __name__ == "__main__":
    main()
