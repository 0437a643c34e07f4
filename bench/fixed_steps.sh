#!/usr/bin/env bash
# Figures at fixed seeds and steps, to compare two versions of the engine on the same work:
# the quickstart for 3,000 steps, and the recursion bench's two arms for 300 steps at seed 0.
#   bench/fixed_steps.sh REPO OUT      (REPO: a checkout; PYTHON: the interpreter, default .venv/bin/python)
# Prints one line per run: step, loss, held-out exact and cell accuracy, steps/s.
set -euo pipefail
repo=$(cd "$1" && pwd); out=$(mkdir -p "$2" && cd "$2" && pwd)
py=${PYTHON:-$(pwd)/.venv/bin/python}
lab() { (cd "$repo" && PYTHONPATH="$repo" OMP_NUM_THREADS=1 "$py" -c 'import sys; from lab.cli import main; sys.exit(main())' "$@"); }
cat > "$out/recursion.toml" <<'T'
name = "recursion-fixed"
[task]
name = "sudoku"
size = 6
difficulty = 2
[model]
d_model = 128
n_layers = 2
mixer = "mlp"
expansion = 2.0
[optim]
lr = 3e-3
warmup_steps = 50
[train]
batch_size = 32
max_steps = 300
threads = 1
seed = 0
[eval]
every = 300
n_puzzles = 300
batch_size = 256
use_ema = false
[checkpoint]
every = 0
T
lab run configs/quickstart.toml --headless --json --runs-dir "$out/runs" \
    --set train.max_minutes=0 --set train.max_steps=3000 > "$out/quickstart.jsonl"
lab run "$out/recursion.toml" --headless --json --runs-dir "$out/runs" \
    --set model.H_cycles=3 --set model.L_cycles=3 --set model.halt_max_steps=4 > "$out/trm.jsonl"
lab run "$out/recursion.toml" --headless --json --runs-dir "$out/runs" \
    --set model.H_cycles=1 --set model.L_cycles=1 --set model.halt_max_steps=1 > "$out/single_pass.jsonl"
for name in quickstart trm single_pass; do
    grep eval_exact "$out/$name.jsonl" | tail -1 | "$py" -c "import json, sys; d = json.loads(sys.stdin.read()); \
print('$name', {k: round(d[k], 4) for k in ('step', 'loss', 'eval_exact', 'eval_cell', 'steps_per_s')})"
done
