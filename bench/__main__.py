"""`python -m bench [--quick] [--memory]`: run the benchmark, print the table, write results."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from bench import report, run


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer events: under 3 minutes")
    parser.add_argument(
        "--memory",
        action="store_true",
        help="also process 500,000 events (100,000 with --quick) and compare peak RSS",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a worker setting for every run, e.g. --set batch_max_records=1000",
    )
    args = parser.parse_args()
    plan = run.QUICK if args.quick else run.FULL
    if args.memory:
        counts = (20_000, 100_000) if args.quick else (100_000, 500_000)
        plan = dataclasses.replace(plan, memory_events=counts)
    if args.set:
        overrides = dict(item.split("=", 1) for item in args.set)
        plan = dataclasses.replace(plan, settings=overrides)
    results = run.main(plan)
    json_path = plan.results / f"{plan.name}.json"
    png_path = plan.results / f"{plan.name}.png"
    report.write_json(results, json_path)
    report.plot(results, png_path)
    out = sys.stdout
    out.write("\n" + report.table(results) + "\n\n" + report.verdicts(results) + "\n\n")
    machine = results["machine"]
    out.write(
        f"{results['date']}, {machine['cores']} cores, {machine['memory_gib']} GiB, "
        f"load {machine['load_before'][0]:.2f} before / {machine['load_after'][0]:.2f} after, "
        f"PostgreSQL {'durable' if results['postgresql_durable'] else 'fsync off'}, "
        f"{results['duration_s']:.0f} s\nwrote {json_path} and {png_path}\n"
    )


if __name__ == "__main__":
    main()
