"""The paper's Table 1 numbers (paper.yaml beside this file), shared by the table and the curves.

PAPER[experiment] = (energy, method, (mean, std) per metric in METRICS); PAPER_RUNS: the runs
behind each mean / std; TABLE_ROWS: the experiments `make table-samplers` trains, in order.
"""

from pathlib import Path

import yaml

PAPER_FILE = Path(__file__).with_name("paper.yaml")
METRICS = ("abs_delta_log_z", "abs_delta_log_z_rw", "w2")
Row = tuple  # (energy, method, (mean, std) | None per metric)


def load_paper(path: Path = PAPER_FILE) -> tuple[dict[str, Row], int, list[str]]:
    """(rows by experiment, runs per mean / std, table rows) read from a paper.yaml."""
    data = yaml.safe_load(Path(path).read_text())
    rows = {
        name: (r["energy"], r["method"], *(tuple(r[m]) if r.get(m) is not None else None for m in METRICS))
        for name, r in data["experiments"].items()
    }
    unknown = [e for e in data["table_rows"] if e not in rows]
    if unknown:
        raise ValueError(f"{path}: table_rows {unknown} have no entry under experiments")
    return rows, int(data["runs"]), list(data["table_rows"])


PAPER, PAPER_RUNS, TABLE_ROWS = load_paper()


def paper_row(experiment: str) -> Row:
    """The paper's row of an experiment; ("?", experiment, None, None, None) for one the paper lacks."""
    return PAPER.get(experiment, ("?", experiment, *(None for _ in METRICS)))
