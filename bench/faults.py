"""The fault-injection suite as a table: each case breaks a real run on purpose (kill -9, SIGTERM, damaged
checkpoints, NaN, out of memory, disk full, hostile sockets, configs, pickles and programs) and checks what
the lab does about it. The cases themselves are specifications and live with the tests
(tests/faults/scenarios.py); this script runs them all and prints the table.

    .venv/bin/python bench/faults.py [--quick | --smoke] [--cases 1,4,5] [--seed S]

Ends with a JSON line: passed, failed, total, seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from tests.faults.scenarios import CASES, Outcome  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="every case once; 3 kill points instead of 20")
    ap.add_argument("--cases", default="", help="comma-separated case numbers (default: all)")
    ap.add_argument("--seed", type=int, default=0, help="chooses the kill points of case 1")
    ap.add_argument("--smoke", action="store_true", help="case 11 alone (seconds), unless --cases: checks the path")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    chosen = [int(c) for c in args.cases.split(",") if c.strip()] or ([11] if args.smoke else list(CASES))
    t_all = time.perf_counter()
    passed = failed = 0
    print(f"{'#':>2}  {'case':<20} {'result':<6} {'sec':>6}  done | expected | happened", flush=True)
    for number in chosen:
        title, fn = CASES[number]
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"faults{number}-") as tmp:
            try:
                outcome = fn(Path(tmp), args.quick or args.smoke, args.seed)
            except Exception as exc:  # noqa: BLE001 - a case that blows up is a failed row, not a dead suite
                outcome = Outcome("(case raised)", "", f"{exc.__class__.__name__}: {str(exc)[:300]}", False)
        passed += outcome.ok
        failed += not outcome.ok
        verdict = "PASS" if outcome.ok else "FAIL"
        print(f"{number:>2}  {title:<20} {verdict:<6} {time.perf_counter() - t0:>6.1f}  "
              f"{outcome.done} | {outcome.expected} | {outcome.happened}", flush=True)
    seconds = time.perf_counter() - t_all
    print(json.dumps({"passed": passed, "failed": failed, "total": passed + failed, "seconds": round(seconds, 1)}))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
