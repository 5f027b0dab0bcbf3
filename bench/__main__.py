"""`python -m bench [--quick] [--part NAME ...] [...]`: run the benchmark, print, write results.

`make bench` runs the full plan and is the only run that writes `bench/results/latest.*` and
the documents' generated blocks (`bench.docs`); `--quick` writes `quick.*`; any other choice
of parts, rounds, sizes or settings writes `custom.*`, so a reduced run never stands in for
the full one. A run whose correctness check fails exits 1 and writes no results.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys

from bench import docs, report, run
from bench.verify import BenchFailure
from consumer import logs


def _marks(text: str) -> tuple[int, ...]:
    return tuple(int(part.replace("_", "")) for part in text.split(","))


def parser() -> argparse.ArgumentParser:
    found = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    found.add_argument("--quick", action="store_true", help="contenders and latency only (~7 min)")
    found.add_argument(
        "--part",
        action="append",
        choices=run.PARTS,
        help=f"only these parts (repeatable; default: {', '.join(run.DEFAULT_PARTS)})",
    )
    found.add_argument("--memory", action="store_true", help="the same as --part memory")
    found.add_argument(
        "--contender",
        action="append",
        choices=tuple(run.LINE_UP),
        help="only these contenders, in the contenders and latency parts (repeatable)",
    )
    found.add_argument("--rounds", type=int, help="interleaved rounds a figure (default 3)")
    found.add_argument("--window-s", type=float, help="measured seconds a run (default 10)")
    found.add_argument("--warm-up-s", type=float, help="seconds after the first commit (3)")
    found.add_argument("--events", type=int, help="records of the main 6-partition input")
    found.add_argument(
        "--sweep-events", type=int, help="records of the 24-partition and poison inputs"
    )
    found.add_argument("--wide-events", type=int, help="records of the 96-partition input")
    found.add_argument("--memory-events", type=_marks, help="peak RSS marks, e.g. 100000,500000")
    found.add_argument("--latency-s", type=float, help="measured seconds at 1,000 events/s")
    found.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a worker setting for every run, e.g. --set batch_max_records=1000",
    )
    return found


def plan_of(args: argparse.Namespace) -> run.Plan:
    plan = run.QUICK if args.quick else run.FULL
    changes: dict[str, object] = {}
    parts = list(args.part or ())
    if args.memory:
        parts.append("memory")
    if parts:
        changes["parts"] = tuple(part for part in run.PARTS if part in parts)
    if args.contender:
        changes["contenders"] = tuple(args.contender)
        changes["latency_contenders"] = tuple(args.contender)
    for name in (
        "rounds",
        "window_s",
        "warm_up_s",
        "events",
        "sweep_events",
        "wide_events",
        "latency_s",
    ):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    if args.memory_events:
        changes["memory_marks"] = args.memory_events
    if args.set:
        changes["settings"] = dict(item.split("=", 1) for item in args.set)
    if changes:
        changes.setdefault("name", "custom")
    return dataclasses.replace(plan, **changes)  # type: ignore[arg-type]


def command_line(argv: list[str]) -> str:
    """How this run was asked for, in the form a reader can repeat."""
    quick = "--quick" in argv
    rest = [arg for arg in argv if arg != "--quick"]
    if "MAKELEVEL" in os.environ:
        target = "make bench-quick" if quick else "make bench"
        return target + (f" ARGS={shlex.quote(shlex.join(rest))}" if rest else "")
    return shlex.join([".venv/bin/python", "-m", "bench", *argv])


def main() -> None:
    args = parser().parse_args()
    logs.configure("console", "WARNING")  # the harness's own store calls: stderr, not stdout
    plan = plan_of(args)
    command = command_line(sys.argv[1:])
    try:
        results = run.main(plan, command)
    except (BenchFailure, RuntimeError) as failure:
        sys.stderr.write(f"\nbench: FAILED: {failure}\nbench: no results were written.\n")
        sys.exit(1)
    json_path = plan.results / f"{plan.name}.json"
    png_path = plan.results / f"{plan.name}.png"
    report.write_json(results, json_path)
    report.plot(results, png_path)
    written = [json_path, png_path]
    if plan.name == "latest":
        written += docs.update(results)
    sys.stdout.write(
        "\n" + report.markdown(results) + "\n\nwrote " + ", ".join(map(str, written)) + "\n"
    )


if __name__ == "__main__":
    main()
