#!/usr/bin/env bash
# The GPU checks in one go, for a CUDA machine, within 8 minutes: the card and torch's view of it, bench/gpu.py
# (both presets, checkpointing on and off), bench/compile.py on CUDA, a short quickstart run in train.dtype = auto
# (bfloat16 expected), NVML telemetry as the console's VRAM pane reads it, and a 2-process NCCL run when there
# are 2 cards or more. Every step's output goes to $OUT/<step>.txt and its exit status to $OUT/summary.txt.
#
#   OUT=gpu-check PYTHON=.venv/bin/python bash bench/gpu_check.sh
#
# Each step has its own time limit (the sum is 7 minutes 50 seconds), so one that hangs cannot eat the others' time.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
: > "$OUT/summary.txt"

step() {  # step NAME SECONDS COMMAND...: run it with a time limit, output to $OUT/NAME.txt
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - t0))" | tee -a "$OUT/summary.txt"
}

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
step env 15 "$PYTHON" -c "
import torch
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())
print('cards', torch.cuda.device_count(), [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
print('bf16 native', torch.cuda.is_bf16_supported(including_emulation=False))
import engine.precision as p; print('train.dtype auto ->', p.resolve_dtype('auto', torch.device('cuda', 0)))
"
step gpu 200 "$PYTHON" bench/gpu.py --quick --checkpointing
step compile 100 "$PYTHON" bench/compile.py --quick --device cuda
step quickstart 50 "$PYTHON" -m lab.cli run configs/quickstart.toml --headless --runs-dir "$OUT/runs" \
    --set train.device=cuda --set train.max_minutes=0.5
step quickstart_world 15 "$PYTHON" -c "
import sys
from pathlib import Path
from engine.store import RunReader
run = next(p for p in Path('$OUT/runs').iterdir() if not p.name.startswith('.'))
r = RunReader(run)
world = [e['data'] for e in r.events(kinds=['world'])]
r.close()
print('world events:', world)
sys.exit(0 if world and world[-1].get('dtype') == 'bfloat16' and world[-1].get('device') == 'cuda:0' else 1)
"
step telemetry 15 "$PYTHON" -c "
import torch
from engine.telemetry import Telemetry
t = Telemetry(torch.device('cuda', 0))
x = torch.empty(256 * 2**20, dtype=torch.uint8, device='cuda')  # 256 MiB the card must show
s = t.sample()
print(s)
print('vram fraction', t.vram_used_fraction())
ok = s['gpu_name'] and s['vram_used_mb'] and s['vram_total_mb'] and s['torch_alloc_mb'] >= 256
raise SystemExit(0 if ok else 1)
"
cards=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "${cards:-0}" -ge 2 ]; then
    step nccl 75 "$PYTHON" -m lab.cli run configs/quickstart.toml --headless --nproc 2 --runs-dir "$OUT/runs-nccl" \
        --set train.device=cuda --set train.max_steps=50 --set train.max_minutes=0
else
    echo "nccl skipped: $cards card(s)" | tee -a "$OUT/summary.txt"
fi
