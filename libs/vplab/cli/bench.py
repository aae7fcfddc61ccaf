"""``vplab bench NAME [--json]``: run one benchmark (see BENCHMARKS.md).

Progress goes to stderr; stdout is a human summary and, as its LAST line, one JSON object
with the figures (``--json``: only that line).
"""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    from vplab.bench import benchmarks

    p = sub.add_parser("bench", help="run a benchmark (human summary, then one JSON line)")
    bsub = p.add_subparsers(dest="bench_name", required=True, metavar="NAME")
    for bench in benchmarks().values():
        q = bsub.add_parser(bench.name, help=bench.help, description=bench.help)
        q.add_argument("--json", action="store_true", help="print only the JSON line")
        bench.add_arguments(q)
        q.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from vplab.bench import get_benchmark

    result = get_benchmark(args.bench_name).run(args)
    if not args.json:
        print(result.human(), flush=True)
    print(result.to_json(), flush=True)
    return 0
