"""A worker for test fleets: `videoscore worker` that also serves the fast stand-in scorer.

    python -m videoscore.worker.testing.fleet_worker worker --concurrency 4 --hostname w1@%h [--gpus 0,1] [--events]

The chaos suite, the API tests with a worker and the benchmarks start their workers with this. It registers
`FastScorer` for model folders built by `build_fast_stand_in`, then runs the same worker as `videoscore worker`
(same options; `--gpus` children are started with this entry point too). A production worker never imports it,
so the fast stand-in's fault injection (`#stand-in:crash` kills the process) cannot fire there: a job naming a
fast stand-in folder fails there with `model_load_error`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from videoscore.core.settings import Settings
from videoscore.worker.service.runtime import register_scorer
from videoscore.worker.testing.fast_scorer import FAST_SCORER, FastPreprocessor, FastScorer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m videoscore.worker.testing.fleet_worker",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["worker"], help="what `videoscore` would be asked to run")
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--preload", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--loglevel", default="INFO")
    parser.add_argument("--hostname", default=None)
    parser.add_argument("--gpus", default=None)
    parser.add_argument("--queues", default=None)
    parser.add_argument("--events", action="store_true", help="send Celery task events (-E)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    register_scorer(FAST_SCORER, FastScorer.load, FastPreprocessor.load)
    if args.queues:
        os.environ["VIDEOSCORE_WORKER_QUEUES"] = json.dumps([q.strip() for q in args.queues.split(",") if q.strip()])
    from videoscore.worker.service.main import parse_gpus, run_gpu_workers, run_worker

    settings = Settings()
    if args.gpus:
        return run_gpu_workers(settings, parse_gpus(args.gpus), concurrency=args.concurrency, preload=args.preload,
                               loglevel=args.loglevel, hostname=args.hostname, events=args.events)
    run_worker(settings, concurrency=args.concurrency, preload=args.preload, loglevel=args.loglevel,
               hostname=args.hostname, events=args.events)
    return 0


if __name__ == "__main__":
    sys.exit(main())
