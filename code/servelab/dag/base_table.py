"""The stored base-size table (BERT-base and big LSTMs), measured once by
``python -m servelab.dag --base-table`` and quoted by the chapter.

Part of :mod:`servelab.dag`. Taught in: chapters/03_dag.ipynb.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict
from typing import Sequence

from torch import nn

from servelab import hardware, microbench
from servelab.dag.cost_model import bert_flops, lstm_flops
from servelab.dag.latency import latency_sweep


BASE_TABLE = "dag_base_table"


def base_table_models() -> dict[str, tuple[str, nn.Module]]:
    """The base-size models: BERT-base, equal-width LSTMs, and a FLOP-matched LSTM.

    The FLOP-matched LSTM has BERT-4L-256's non-embedding parameters (8H² = 4·12·256²),
    so it does the same FLOPs per token.
    """
    from servelab import models

    matched = round(math.sqrt(4 * 12 * 256**2 / 8))
    return {
        "BERT-base (12L-768)": ("bert", models.build("bert", 768, 12)),
        "LSTM-768 loop": ("unrolled", models.build("unrolled", 768)),
        "LSTM-768 fused": ("fused", models.build("fused", 768)),
        "BERT-4L-256": ("bert", models.build("bert", 256, 4)),
        f"LSTM-{matched} loop (FLOP-matched)": ("unrolled", models.build("unrolled", matched)),
        f"LSTM-{matched} fused (FLOP-matched)": ("fused", models.build("fused", matched)),
    }


def measure_base_table(lengths: Sequence[int] = (16, 64, 256, 1024), repeats: int = 3) -> list[dict]:
    """Latency of the base-size models at 1 and all threads, with achieved GFLOP/s."""
    rows = []
    for label, (kind, model) in base_table_models().items():
        points = latency_sweep({label: model}, lengths, repeats=repeats, max_seconds=30.0)
        s = model.shape
        for p in points:
            flops = bert_flops(p.T, s.layers, s.width) if kind == "bert" else lstm_flops(p.T, s.width, s.width)
            rows.append({**asdict(p), "kind": kind, "width": s.width, "layers": s.layers,
                         "ms": p.seconds * 1e3, "gflops": float(flops) / p.seconds / 1e9})
        print(f"measured {label}", flush=True)
    return rows


def write_base_table(directory: str | os.PathLike | None = None) -> str:
    """Measure the base table and write ``<directory>/dag_base_table.csv`` and ``.json`` (with the hardware)."""
    import csv
    import datetime
    import json
    from pathlib import Path

    directory = Path(directory or Path(__file__).resolve().parents[1] / "data")
    directory.mkdir(parents=True, exist_ok=True)
    peak = microbench.measure_matmul_gflops(1024, 1)
    rows = measure_base_table()
    with open(directory / f"{BASE_TABLE}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    meta = {"hardware": hardware.describe(), "short": hardware.short_description(),
            "matmul_peak_gflops_1_thread": peak, "measured": datetime.date.today().isoformat(),
            "command": "python -m servelab.dag --base-table", "rows": rows}
    (directory / f"{BASE_TABLE}.json").write_text(json.dumps(meta, indent=1))
    return str(directory / f"{BASE_TABLE}.json")


def load_base_table() -> dict:
    """The stored base-size table: ``{"hardware": ..., "short": ..., "rows": [...]}``."""
    import json
    from importlib import resources

    return json.loads(resources.files("servelab").joinpath(f"data/{BASE_TABLE}.json").read_text())


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m servelab.dag --base-table [DIR]``."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-table", nargs="?", const="", metavar="DIR",
                        help="measure the base-size table and write it (default: servelab/data)")
    args = parser.parse_args(argv)
    if args.base_table is None:
        parser.print_help()
        return
    print("wrote", write_base_table(args.base_table or None))


if __name__ == "__main__":
    main()
