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
        help="only the memory run: one worker over 500,000 events (100,000 with --quick), "
        "peak RSS after 100,000 (20,000) and after all of them",
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
        name = "memory-quick" if args.quick else "memory"
        plan = dataclasses.replace(plan, name=name, memory_events=counts, memory_only=True)
    if args.set:
        overrides = dict(item.split("=", 1) for item in args.set)
        plan = dataclasses.replace(plan, settings=overrides)
    results = run.main(plan)
    json_path = plan.results / f"{plan.name}.json"
    report.write_json(results, json_path)
    written = [json_path]
    out = sys.stdout
    if plan.memory_only:
        out.write("\n" + report.memory_verdict(results["memory"]) + "\n\n")
    else:
        png_path = plan.results / f"{plan.name}.png"
        report.plot(results, png_path)
        written.append(png_path)
        out.write("\n" + report.table(results) + "\n\n" + report.verdicts(results) + "\n\n")
    machine = results["machine"]
    out.write(
        f"{results['date']}, {machine['cores']} cores, {machine['memory_gib']} GiB, "
        f"load {machine['load_before'][0]:.2f} before / {machine['load_after'][0]:.2f} after, "
        f"PostgreSQL {'durable' if results['postgresql_durable'] else 'fsync off'}, "
        f"{results['duration_s']:.0f} s\nwrote {', '.join(map(str, written))}\n"
    )


if __name__ == "__main__":
    main()
