"""The claims ledger: records, failures, skips, the tally, and the page's table."""

import json
from pathlib import Path
from dataclasses import asdict

import pytest

from servelab import claims
from servelab.claims_page import MARKER, page_markdown


def test_at_least_and_at_most_hold_and_fail_with_the_message():
    ok = claims.at_least("x.gain", "Batching helps.", 2.0, 1.5, fail="only 2×?")
    bad = claims.at_least("x.gain", "Batching helps.", 1.2, 1.5, fail="batching gained only 1.20×")
    assert ok.held and ok.measured == "2.00×" and ok.bound == "≥ 1.50×"
    assert bad.outcome == claims.FAILED and bad.message == "batching gained only 1.20×"
    assert claims.at_most("x.cap", "Capped.", 0.9, 1.0, fail="m").held
    assert claims.at_most("x.cap", "Capped.", 1.1, 1.0, fail="m").outcome == claims.FAILED


def test_a_skip_needs_a_known_kind_and_a_reason():
    with pytest.raises(ValueError):
        claims.skipped("x.y", "s", kind="I felt like it", reason="r")
    with pytest.raises(ValueError):
        claims.Claim("x.y", "s", "", "", claims.SKIPPED, "", "contended")
    with pytest.raises(ValueError):
        claims.Claim("x.y", "s", "1", "2", claims.FAILED)  # a failure must say why


def test_ledger_writes_its_record_and_a_failed_claim_fails_the_cell(tmp_path, capsys):
    ledger = claims.Ledger("07_test", directory=tmp_path)
    ledger.add(claims.at_least("t.a", "A holds.", 3, 2, fail="a broke"),
               claims.skipped("t.b", "B needs quiet.", kind="contended", reason="0.9 cores outside"),
               claims.at_least("t.c", "C holds.", 1, 2, fail="c broke: 1.00× < 2×"))
    with pytest.raises(AssertionError, match=r"\[t.c\] c broke"):
        ledger.finish()
    record = json.loads((tmp_path / "07_test.json").read_text())
    assert [c["outcome"] for c in record["claims"]] == ["held", "skipped", "failed"]
    assert record["hardware"] and record["cores"] >= 1
    assert "0.9 cores outside" in capsys.readouterr().out


def test_duplicate_ids_and_empty_ledgers_are_refused(tmp_path):
    ledger = claims.Ledger("07_test", directory=tmp_path)
    ledger.add(claims.at_least("t.a", "A.", 3, 2, fail="f"))
    with pytest.raises(ValueError):
        ledger.add(claims.at_least("t.a", "A again.", 3, 2, fail="f"))
    with pytest.raises(AssertionError, match="no claim"):
        claims.Ledger("08_empty", directory=tmp_path).finish()


def test_tally_counts_outcomes_and_skip_reasons(tmp_path, capsys):
    for chapter, outcome in (("01_a", "held"), ("02_b", "skip")):
        ledger = claims.Ledger(chapter, directory=tmp_path)
        ledger.add(claims.at_least(f"{chapter}.x", "X.", 2, 1, fail="f"))
        if outcome == "skip":
            ledger.add(claims.skipped(f"{chapter}.y", "Y.", kind="one core", reason="1 core"))
        ledger.finish()
    assert claims.main(["tally", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert out.startswith("claims: 2 held, 0 failed, 1 skipped (one core: 1)")
    assert "01_a, 02_b" in out


def test_page_table_has_a_row_per_claim_and_escapes_pipes(tmp_path):
    ledger = claims.Ledger("01_a", directory=tmp_path)
    ledger.add(claims.condition("a.pipe", "x | y", True, measured="1|2", bound="b", fail="f"))
    ledger.write()
    text = page_markdown(claims.load_records(tmp_path))
    assert "claims: 1 held" in text and "x \\| y" in text and "1\\|2" in text
    assert page_markdown([]) .startswith("No chapter")
    assert MARKER not in text


def test_robustness_matrix_shows_each_claim_under_each_condition():
    from servelab.robustness import ChapterRun, matrix_markdown

    def record(outcome_b):
        b = claims.skipped("c.b", "B.", kind="one core", reason="1 core") if outcome_b == "skip" else \
            claims.at_least("c.b", "B.", 2, 1, fail="f")
        return [{"chapter": "01_a", "claims": [asdict(claims.at_least("c.a", "A.", 2, 1, fail="f")),
                                               asdict(b)]}]
    text = matrix_markdown({"all-cores": record("held"), "one-core": record("skip"), "no-wrk": []},
                           [ChapterRun("no-wrk", "01_a", False, 12.0)])
    assert "| `c.b` | held | skipped (one core) | no record |" in text
    assert "- **one-core**: claims: 1 held, 0 failed, 1 skipped (one core: 1); no record: 0" in text
    assert "| no-wrk | 01_a | failed | 12 |" in text


def test_unless_contended_turns_only_failures_under_load_into_skips():
    held = claims.at_least("x.a", "A.", 2, 1, fail="f")
    failed = claims.at_least("x.a", "A.", 0.5, 1, fail="only 0.50×")
    assert claims.unless_contended(held, 0.9) is held
    assert claims.unless_contended(failed, None) is failed
    skip = claims.unless_contended(failed, 0.9)
    assert skip.outcome == claims.SKIPPED and skip.skip_kind == "contended" and "0.90 cores" in skip.message
    assert "only 0.50×" in skip.message


def test_robustness_rerun_of_a_chapter_replaces_only_its_row(tmp_path, monkeypatch):
    from servelab import robustness

    def fake_run(chapter, condition, records):
        record = {"chapter": chapter.stem, "claims": [asdict(claims.at_least(f"{chapter.stem}.a", "A.", 2, 1, fail="f"))]}
        (records / f"{chapter.stem}.json").write_text(json.dumps(record))
        return robustness.ChapterRun(condition.name, chapter.stem, True, 1.0)

    monkeypatch.setattr(robustness, "run_chapter", fake_run)
    robustness.run_condition("no-wrk", [Path("01_a.ipynb"), Path("02_b.ipynb")], tmp_path)
    (tmp_path / "02_b.json").write_text("stale")  # a rerun must not read this
    robustness.run_condition("no-wrk", [Path("02_b.ipynb")], tmp_path)
    assert sorted(robustness.read_runs(tmp_path)) == ["01_a", "02_b"]
    assert [r["chapter"] for r in claims.load_records(tmp_path)] == ["01_a", "02_b"]
    robustness.run_condition("no-wrk", [Path("02_b.ipynb")], tmp_path, book={"02_b"})  # 01_a was renamed away
    assert sorted(robustness.read_runs(tmp_path)) == ["02_b"]
    assert [r["chapter"] for r in claims.load_records(tmp_path)] == ["02_b"]


def test_claims_page_leaves_out_chapters_no_longer_in_the_book(tmp_path):
    from servelab.claims_page import book_records

    (tmp_path / "05b_ray_autoscaling.ipynb").write_text("{}")
    records = [{"chapter": "05b_ray_autoscaling"}, {"chapter": "05b_ray_faults"}]  # the second was renamed away
    assert book_records(records, tmp_path) == [{"chapter": "05b_ray_autoscaling"}]
