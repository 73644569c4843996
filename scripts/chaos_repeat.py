"""Run chaos scenarios several times in a row and print one line per run (not part of CI: minutes per run).

    .venv/bin/python scripts/chaos_repeat.py --times 10                          # every scenario
    .venv/bin/python scripts/chaos_repeat.py --times 10 tests/chaos/test_worker_killed.py

Each run is a fresh pytest process (fresh servers); its verdict, wall time and the figures line the scenario
reported (tests/chaos/conftest.py's `report`) are printed, then a pass count per scenario.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests" / "chaos").glob("test_*.py"))


def run_once(target: str) -> tuple[bool, float, list[str]]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", target, "-q", "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True)
    output = done.stdout + done.stderr
    summary = output[output.find("chaos figures"):] if "chaos figures" in output else ""
    figures = [line for line in summary.splitlines()[1:] if re.match(r"^\S.*submitted \d+", line)]
    if done.returncode != 0:
        figures.append(next((line for line in reversed(output.splitlines()) if " failed" in line), "failed"))
    return done.returncode == 0, time.monotonic() - started, figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", default=SCENARIOS, help="test files or node ids (default: all)")
    parser.add_argument("--times", type=int, default=10)
    args = parser.parse_args()
    passes: dict[str, int] = {}
    for target in args.scenarios:
        passes[target] = 0
        for i in range(1, args.times + 1):
            ok, seconds, figures = run_once(target)
            passes[target] += ok
            print(f"{target} run {i}: {'pass' if ok else 'FAIL'} in {seconds:.0f}s", flush=True)
            for line in figures:
                print(f"    {line}", flush=True)
    for target, n in passes.items():
        print(f"{target}: {n}/{args.times} passed")
    return 0 if all(n == args.times for n in passes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
