"""GPU figures: steps/s, tokens/s, model FLOP utilisation, peak VRAM and the largest batch under 12 GB, for the
quickstart and the seed-sized TRM x Titans-MAG preset.

    .venv/bin/python bench/gpu.py [--quick | --smoke]

Without CUDA it says so in one line, {"cuda": false, ...}, and exits 0. The measurements on a GPU are not
written yet: with CUDA it says that, in one line, and exits 0 too.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smaller budget (same code path)")
    ap.add_argument("--smoke", action="store_true", help="seconds: checks the code path")
    ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"cuda": False, "note": "no CUDA device here; the GPU figures need one"}))
        return 0
    print(json.dumps({"cuda": True, "device": torch.cuda.get_device_name(0),
                      "note": "the GPU measurements are not written yet; nothing was measured"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
