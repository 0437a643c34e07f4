"""Every bench runs: each script with --smoke (seconds, tiny budgets, its own code path) exits 0 and ends with a
JSON line, so a bench broken by a change elsewhere fails here rather than at its next full run.

The scripts run as subprocesses from the repository root, two at a time (the CI machine has two cores), started
together when the module's first test asks for them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# slowest first, so the two workers finish close together
BENCHES = ["kv_gap", "dexter", "console", "recursion", "compile", "curriculum", "phase5", "memory_speed", "grokking",
           "objectives", "overhead", "ddp", "peers", "quickstart", "faults", "gpu"]
NOT_BENCHES = {"stats"}  # modules in bench/ that other scripts import


def run_smoke(name: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py"), "--smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def smoke_runs(request) -> dict[str, Future]:
    """The smoke runs of the benches this pytest run selected, already started."""
    wanted = {item.callspec.params["bench"] for item in request.session.items
              if item.module is request.module and "bench" in getattr(getattr(item, "callspec", None), "params", {})}
    pool = ThreadPoolExecutor(max_workers=2)
    futures = {name: pool.submit(run_smoke, name) for name in BENCHES if name in wanted}
    yield futures
    pool.shutdown(cancel_futures=True)


def test_every_bench_is_smoke_tested_and_takes_quick_and_smoke():
    scripts = {p.stem for p in (ROOT / "bench").glob("*.py")} - NOT_BENCHES
    assert scripts == set(BENCHES)
    for name in BENCHES:
        source = (ROOT / "bench" / f"{name}.py").read_text()
        assert '"--quick"' in source and '"--smoke"' in source, name


@pytest.mark.parametrize("bench", BENCHES)
def test_bench_smoke_run_exits_0_and_ends_with_a_json_object(bench, smoke_runs):
    proc = smoke_runs[bench].result()
    tail = f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, tail
    lines = proc.stdout.strip().splitlines()
    assert lines, tail
    assert isinstance(json.loads(lines[-1]), dict), tail


def test_a_peers_run_stopped_before_its_budget_is_not_kept_for_resume(tmp_path):
    """A run stopped from outside (the invocation killed) ends its training early: its figures are not those of the
    budget, so `--resume` must not take them up as a finished run."""
    import signal
    import time

    args = ["--child=ours", "--difficulty=1", "--seed=0", "--lr=0.001", "--wd=0.1", "--budget-s=300", "--threads=1",
            "--clock=wall", "--n-eval=8", "--n-val=8", "--mem-steps=1", "--set=model.d_model=32",
            "--set=train.batch_size=8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "peers.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p.is_dir() and any(p.iterdir()) for p in tmp_path.glob("tmp*")):  # the run's directory is in use
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.2)
    time.sleep(3)  # training under way
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "its result is not kept" in err, err[-2000:]
    assert not list(tmp_path.glob("trm-lab-peers/*.json"))
