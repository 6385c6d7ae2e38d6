"""The claims ledger: every claim a chapter makes, what was measured, and whether it held.

A chapter's hidden check cell builds each claim with a check function of its topic module (for
example ``dag.claim_loop_linear_in_T``), which takes the numbers just measured and returns a
:class:`Claim`: a stable id, the sentence it checks, the measured value, the bound and the outcome
(``held``, ``failed``, or ``skipped`` with the measured reason). The cell adds them to a
:class:`Ledger` and calls :meth:`Ledger.finish`, which writes one JSON record per chapter and
raises if any claim failed, so a failed claim still fails the cell.

The book build collects the records into the page *What held on this machine* (``claims.md``,
filled in by the Sphinx extension in ``servelab.claims_page``), and ``make test`` prints
``python -m servelab.claims tally``.

Taught in: every chapter's check cell; listed on claims.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

HELD, FAILED, SKIPPED = "held", "failed", "skipped"
OUTCOMES = (HELD, FAILED, SKIPPED)
# Why a claim may be skipped. Anything else is a bug in the check, not a property of the machine.
SKIP_KINDS = ("contended", "one core", "tool missing", "hardware")  # hardware: a measured machine trait voids the test


@dataclass(frozen=True)
class Claim:
    """One claim as checked on this machine.

    ``measured`` and ``bound`` are short texts for the ledger table (``"1.82×"``, ``"≥ 1.25×"``);
    ``message`` is the plain-words explanation: why it failed, or why it was skipped.
    """

    id: str
    sentence: str
    measured: str
    bound: str
    outcome: str
    message: str = ""
    skip_kind: str = ""

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, not {self.outcome!r}")
        if self.outcome == SKIPPED and self.skip_kind not in SKIP_KINDS:
            raise ValueError(f"a skipped claim needs a skip_kind from {SKIP_KINDS}, not {self.skip_kind!r}")
        if self.outcome != HELD and not self.message:
            raise ValueError(f"claim {self.id}: a {self.outcome} claim needs a message saying why")

    @property
    def held(self) -> bool:
        return self.outcome == HELD


def fmt(value: float, unit: str = "×", digits: int = 2) -> str:
    """A measured number as the ledger shows it: ``fmt(1.8234) == '1.82×'``."""
    return f"{value:.{digits}f}{unit}"


def condition(claim_id: str, sentence: str, ok: bool, *, measured: str, bound: str, fail: str) -> Claim:
    """A claim that holds when ``ok``; ``fail`` says in plain words what went wrong."""
    return Claim(claim_id, sentence, measured, bound, HELD if ok else FAILED, "" if ok else fail)


def at_least(claim_id: str, sentence: str, value: float, bound: float, *, fail: str, unit: str = "×",
             digits: int = 2) -> Claim:
    """The claim ``value >= bound``."""
    return condition(claim_id, sentence, value >= bound, measured=fmt(value, unit, digits),
                     bound=f"≥ {fmt(bound, unit, digits)}", fail=fail)


def at_most(claim_id: str, sentence: str, value: float, bound: float, *, fail: str, unit: str = "×",
            digits: int = 2) -> Claim:
    """The claim ``value <= bound``."""
    return condition(claim_id, sentence, value <= bound, measured=fmt(value, unit, digits),
                     bound=f"≤ {fmt(bound, unit, digits)}", fail=fail)


def skipped(claim_id: str, sentence: str, *, kind: str, reason: str, measured: str = "", bound: str = "") -> Claim:
    """A claim not checked, with the measured reason (``kind`` is one of :data:`SKIP_KINDS`)."""
    return Claim(claim_id, sentence, measured, bound, SKIPPED, reason, kind)


def unless_contended(claim: Claim, outside_cores: float | None) -> Claim:
    """For a claim that other programs' load can only break, never fake (it slows the side the claim
    says is fast): a failure measured while they took ``outside_cores`` becomes a skip with what was
    measured, and a pass stands. ``None`` means the measurement was quiet."""
    if claim.outcome != FAILED or outside_cores is None:
        return claim
    return Claim(claim.id, claim.sentence, claim.measured, claim.bound, SKIPPED,
                 f"other programs took up to {outside_cores:.2f} cores, after retries; measured: {claim.message}",
                 "contended")


def claims_dir() -> Path:
    """Where check cells write their records: ``$SERVELAB_CLAIMS_DIR``, else ``_build/claims`` of the book."""
    if os.environ.get("SERVELAB_CLAIMS_DIR"):
        return Path(os.environ["SERVELAB_CLAIMS_DIR"])
    repo = Path(__file__).resolve().parents[2]
    root = repo if (repo / "_toc.yml").is_file() else Path.cwd()
    return root / "_build" / "claims"


@dataclass
class Ledger:
    """The claims of one chapter, collected by its check cell.

    >>> ledger = Ledger("03_dag")
    >>> ledger.add(at_least("ch3.bert_speedup", "...", 1.8, 1.25, fail="..."))  # doctest: +SKIP
    >>> ledger.finish()                                                          # doctest: +SKIP
    """

    chapter: str
    directory: Path | None = None
    claims: list[Claim] = field(default_factory=list)

    def add(self, *claims: Claim) -> None:
        for claim in claims:
            if any(c.id == claim.id for c in self.claims):
                raise ValueError(f"claim id {claim.id} registered twice in {self.chapter}")
            self.claims.append(claim)

    def record(self) -> dict:
        from . import hardware  # imported here: hardware pulls in torch, the unit tests of this module need not

        return {"chapter": self.chapter, "when": dt.datetime.now().isoformat(timespec="seconds"),
                "hardware": hardware.short_description(), "cores": hardware.usable_cores(),
                "condition": os.environ.get("SERVELAB_CONDITION", ""),
                "claims": [asdict(c) for c in self.claims]}

    def write(self) -> Path:
        directory = self.directory or claims_dir()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.chapter}.json"
        path.write_text(json.dumps(self.record(), indent=1, ensure_ascii=False))
        return path

    def finish(self) -> None:
        """Write the record, print one line per claim, and fail if any claim failed."""
        if not self.claims:
            raise AssertionError(f"{self.chapter}: the check cell registered no claim")
        self.write()
        for c in self.claims:
            mark = {HELD: "✓", FAILED: "✗", SKIPPED: "–"}[c.outcome]
            why = f"  ({c.message})" if c.outcome == SKIPPED else ""
            print(f"{mark} {c.id}: {c.measured} (bound {c.bound or 'n/a'}){why}")
        failed = [c for c in self.claims if c.outcome == FAILED]
        if failed:
            raise AssertionError("; ".join(f"[{c.id}] {c.message}" for c in failed))
        print(f"{self.chapter}: {tally_line(self.claims)}")


def load_records(directory: Path | None = None) -> list[dict]:
    """Every chapter's record in ``directory``, sorted by chapter."""
    directory = directory or claims_dir()
    if not directory.is_dir():
        return []
    return sorted((json.loads(p.read_text()) for p in directory.glob("*.json")), key=lambda r: r["chapter"])


def claims_of(records: Iterable[dict]) -> list[Claim]:
    return [Claim(**c) for r in records for c in r["claims"]]


def tally_line(claims: Sequence[Claim]) -> str:
    """``claims: 41 held, 0 failed, 3 skipped (contended: 2, one core: 1)``."""
    counts = Counter(c.outcome for c in claims)
    kinds = Counter(c.skip_kind for c in claims if c.outcome == SKIPPED)
    why = f" ({', '.join(f'{k}: {n}' for k, n in sorted(kinds.items()))})" if kinds else ""
    return f"claims: {counts[HELD]} held, {counts[FAILED]} failed, {counts[SKIPPED]} skipped{why}"


def markdown_table(records: Sequence[dict]) -> str:
    """The claims of ``records`` as one Markdown table: chapter, claim, measured, bound, outcome."""
    from servelab.notebook import markdown_table as table

    rows = [{"chapter": r["chapter"], "claim": f"{c['sentence']} (`{c['id']}`)", "measured": c["measured"] or "–",
             "bound": c["bound"] or "–", "outcome": c["outcome"] + (f": {c['message']}" if c["outcome"] != HELD else "")}
            for r in records for c in r["claims"]]  # fmt: skip
    return table(rows) or "| chapter | claim | measured | bound | outcome |\n|---|---|---|---|---|"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m servelab.claims", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["tally", "table"])
    parser.add_argument("--dir", type=Path, default=None, help="records folder (default: _build/claims)")
    args = parser.parse_args(argv)
    records = load_records(args.dir)
    if args.command == "tally":
        chapters = ", ".join(r["chapter"] for r in records) or "none"
        print(f"{tally_line(claims_of(records))} [chapters: {chapters}]")
        return 1 if any(c.outcome == FAILED for c in claims_of(records)) else 0
    print(markdown_table(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
