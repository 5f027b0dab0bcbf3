"""The bench's reporting: committed figures come from the committed run, with their commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import __main__ as cli
from bench import docs, report, run
from bench.verify import BenchFailure
from consumer import logs

# The results of a reduced run of every part but `batch` (`python -m bench --part contenders
# ... --rounds 3 --window-s 2`), as bench/run.py wrote them.
SAMPLE = Path(__file__).with_name("bench_results.json")


def _sample() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SAMPLE.read_text())
    return loaded


def test_the_committed_figures_are_what_the_committed_results_give() -> None:
    results = docs.load()

    assert docs.stale(results) == [], "run `python -m bench.docs` (make bench does it)"


def test_every_section_shows_the_command_that_measures_it() -> None:
    text = report.markdown(_sample())

    for part in ("contenders", "latency", "sweep", "failover", "memory"):
        assert f'make bench ARGS="--part {part}"' in text
    assert _sample()["command"] in text


def test_each_figure_is_the_median_of_its_rounds_shown_beside_them() -> None:
    results = _sample()
    ours = results["contenders"]["by_contender"]["ours-postgresql"]["events_per_s"]
    row = next(line for line in report.markdown(results).splitlines() if "ours, PostgreSQL" in line)

    cells = [cell.strip() for cell in row.split("|")]
    assert cells[2] == f"{ours['median']:,.0f}"
    assert cells[3] == " / ".join(f"{value:,.0f}" for value in ours["rounds"])
    assert len(ours["rounds"]) == results["method"]["rounds"] >= 3


def test_the_memory_figure_is_given_for_both_marks() -> None:
    results = _sample()
    text = report.markdown(results)

    for mark, megabytes in results["memory"]["peak_rss_mb_after"].items():
        assert f"{int(mark):,} events: {megabytes:,.0f} MB" in text


def test_results_of_the_earlier_harness_are_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="older bench"):
        report.markdown({"events_per_s": 1.0})


def test_a_block_is_replaced_between_its_markers_only() -> None:
    text = f"before\n{docs.RESULTS_BEGIN}\nold figures\n{docs.RESULTS_END}\nafter\n"

    new = docs.replaced(text, docs.RESULTS_BEGIN, docs.RESULTS_END, "new figures", Path("x"))

    assert new == f"before\n{docs.RESULTS_BEGIN}\nnew figures\n{docs.RESULTS_END}\nafter\n"


def test_a_document_without_the_markers_says_which() -> None:
    with pytest.raises(ValueError, match="markers"):
        docs.replaced("no markers here", docs.RESULTS_BEGIN, docs.RESULTS_END, "x", Path("d.md"))


def test_the_plot_has_a_panel_for_each_part(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the bench extra draws the plot")
    path = tmp_path / "plot.png"

    report.plot(_sample(), path)

    assert path.read_bytes().startswith(b"\x89PNG")


def test_the_full_and_quick_plans_keep_the_method() -> None:
    for plan in (run.FULL, run.QUICK):
        assert plan.rounds >= 3
        assert plan.window_s >= 10
    assert cli.plan_of(cli.parser().parse_args([])).name == "latest"
    assert cli.plan_of(cli.parser().parse_args(["--quick"])).name == "quick"


def test_a_reduced_run_never_writes_the_full_runs_results() -> None:
    for args in (["--part", "sweep"], ["--rounds", "1"], ["--set", "batch_max_records=10"]):
        assert cli.plan_of(cli.parser().parse_args(args)).name == "custom"


def test_a_failed_check_exits_non_zero_and_writes_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def failing(plan: run.Plan, command: str) -> dict[str, Any]:
        raise BenchFailure("ours-postgresql-r1: outputs 79 (wanted 80)")

    monkeypatch.setattr(run, "main", failing)
    # The CLI points structlog at the stderr of the moment: here, a capture closed after the test.
    monkeypatch.setattr(logs, "configure", lambda *args: None)
    monkeypatch.setattr(run.Plan, "results", property(lambda plan: tmp_path))
    monkeypatch.setattr(sys, "argv", ["bench", "--part", "contenders"])

    with pytest.raises(SystemExit) as stopped:
        cli.main()

    assert stopped.value.code == 1
    assert "FAILED: ours-postgresql-r1: outputs 79 (wanted 80)" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
