import os

import pytest
import torch

# Tests run on CPU with one thread each: deterministic and fair to the 2-core CI machine.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def runs_dir(tmp_path):
    d = tmp_path / "runs"
    d.mkdir()
    return d
