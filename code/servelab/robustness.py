"""The robustness matrix: every chapter, run the ways readers will run it, claims × conditions.

``python -m servelab.robustness`` (or ``make robustness``) executes each chapter with nbval under
four conditions and collects the claims ledger of each run:

- ``all-cores``: as is, on every usable core;
- ``one-core``: under ``taskset -c 0``;
- ``busy-neighbour``: with a one-core busy loop beside it, which this script starts and stops;
- ``no-wrk``: without wrk (``SERVELAB_WITHOUT=wrk``), on the asyncio client.

It writes ``_build/robustness/robustness.md``: one row per claim, one column per condition, with
held, failed or skipped (and why), and prints the totals. A chapter that failed before its check
cell shows as "no record". With ``--chapters`` only those chapters run again, and their rows are
replaced; ``--report-only`` writes the table from the records kept. Maintainers run it; ``make test``
does not (it takes about 45 minutes on a 2-core AMD EPYC, 10–14 per condition).

Taught in: README.md (How measurements are kept honest).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from . import claims

ROOT = Path(__file__).resolve().parents[2]
BUSY_LOOP = "while True: pass"


@dataclass(frozen=True)
class Condition:
    name: str
    prefix: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    busy_neighbour: bool = False


CONDITIONS = {
    "all-cores": Condition("all-cores"),
    "one-core": Condition("one-core", prefix=("taskset", "-c", "0")),
    "busy-neighbour": Condition("busy-neighbour", busy_neighbour=True),
    "no-wrk": Condition("no-wrk", env=(("SERVELAB_WITHOUT", "wrk"),)),
}


@dataclass(frozen=True)
class ChapterRun:
    condition: str
    chapter: str
    passed: bool
    seconds: float


def run_chapter(chapter: Path, condition: Condition, records: Path) -> ChapterRun:
    """Execute one chapter under nbval in ``condition``, its ledger going to ``records``."""
    env = {**os.environ, **dict(condition.env), "SERVELAB_CLAIMS_DIR": str(records),
           "SERVELAB_CONDITION": condition.name, "HF_HUB_OFFLINE": "1"}
    cmd = [*condition.prefix, sys.executable, "-m", "pytest", "-q", "-x", str(chapter)]
    start = time.monotonic()
    neighbour = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if condition.busy_neighbour else None
    try:
        result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    finally:
        if neighbour is not None:  # ours, by PID: never a process found by name
            neighbour.kill()
            neighbour.wait()
    seconds = time.monotonic() - start
    log = records / f"{chapter.stem}.log"
    log.write_text(result.stdout + result.stderr)
    print(f"  {condition.name:15s} {chapter.stem:14s} {'passed' if result.returncode == 0 else 'FAILED'} "
          f"in {seconds:5.1f} s", flush=True)
    return ChapterRun(condition.name, chapter.stem, result.returncode == 0, seconds)


def cell(claim: dict | None) -> str:
    if claim is None:
        return "no record"
    if claim["outcome"] == claims.SKIPPED:
        return f"skipped ({claim['skip_kind']})"
    return claim["outcome"] + ("" if claim["outcome"] == claims.HELD else " ✗")


def matrix_markdown(by_condition: dict[str, list[dict]], runs: Sequence[ChapterRun]) -> str:
    """The claims × conditions table, the totals per condition, and the chapter runs."""
    names = list(by_condition)
    found = {name: {c["id"]: c for r in records for c in r["claims"]} for name, records in by_condition.items()}
    ids = sorted({claim_id for table in found.values() for claim_id in table})
    lines = ["| claim | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| `{i}` | " + " | ".join(cell(found[n].get(i)) for n in names) + " |" for i in ids]
    totals = [f"- **{n}**: {claims.tally_line(claims.claims_of(by_condition[n]))}; no record: "
              f"{sum(i not in found[n] for i in ids)}" for n in names]
    chapters = [f"| {r.condition} | {r.chapter} | {'passed' if r.passed else 'failed'} | {r.seconds:.0f} |" for r in runs]
    return "\n".join(["# Robustness matrix", "", *totals, "", *lines, "",
                      "| condition | chapter | nbval | seconds |", "|---|---|---|---|", *chapters, ""])


def read_runs(records: Path) -> dict[str, ChapterRun]:
    """The chapter runs kept in ``records``/runs.jsonl (not ``*.json``: those are the ledger's), by chapter."""
    path = records / "runs.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return {r["chapter"]: ChapterRun(**r) for r in rows}


def write_runs(records: Path, runs: dict[str, ChapterRun]) -> None:
    (records / "runs.jsonl").write_text("".join(json.dumps(asdict(r)) + "\n" for _, r in sorted(runs.items())))


def run_condition(name: str, chapters: Sequence[Path], records: Path, *, book: set[str] | None = None) -> None:
    """Run ``chapters`` in condition ``name``; their old records go first, other chapters' stay.

    With ``book`` (the stems of the book's chapters), records of a chapter no longer in it go too:
    a renamed or split notebook must not leave its old rows in the table.
    """
    records.mkdir(parents=True, exist_ok=True)
    runs = read_runs(records)
    if book is not None:
        runs = {stem: run for stem, run in runs.items() if stem in book}
        for ledger in records.glob("*.json"):
            if ledger.stem not in book:
                ledger.unlink()
    for chapter in chapters:  # no stale record may pass for this run's
        (records / f"{chapter.stem}.json").unlink(missing_ok=True)
        runs.pop(chapter.stem, None)
    print(f"condition {name}:", flush=True)
    for chapter in chapters:
        runs[chapter.stem] = run_chapter(chapter, CONDITIONS[name], records)
        write_runs(records, runs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m servelab.robustness", description=__doc__.splitlines()[0])
    parser.add_argument("--conditions", default=",".join(CONDITIONS), help="comma-separated, from: " + ", ".join(CONDITIONS))
    parser.add_argument("--chapters", default="", help="comma-separated notebook stems (default: every chapter); "
                                                      "their rows are replaced, other chapters' kept")
    parser.add_argument("--report-only", action="store_true", help="run nothing: write the table from the records kept")
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "robustness")
    args = parser.parse_args(argv)
    names = args.conditions.split(",")
    book = sorted((ROOT / "chapters").glob("*.ipynb"))
    chapters = [c for c in book if c.stem in args.chapters.split(",")] if args.chapters else book
    if not args.report_only and "one-core" in names and not shutil.which("taskset"):
        parser.error("taskset is missing (Debian: apt-get install util-linux)")
    for name in names if not args.report_only else []:
        run_condition(name, chapters, args.out / name, book={c.stem for c in book})
    by_condition = {name: claims.load_records(args.out / name) for name in names}
    runs = [run for name in names for run in read_runs(args.out / name).values()]
    report = args.out / "robustness.md"
    report.write_text(matrix_markdown(by_condition, runs))
    print(report.read_text())
    failed = any(not r.passed for r in runs) or any(c.outcome == claims.FAILED for recs in by_condition.values()
                                                    for c in claims.claims_of(recs))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
