"""Atomic, verified checkpoints with rotation and fallback.

Layout: `checkpoints/step-00001200/{model.safetensors, state.pt, meta.json}`.
- model.safetensors: weights (model + EMA), never pickled.
- state.pt: optimizer, RNG, data position, carry: loaded with `weights_only=True`, so a
  file that smuggles a pickle payload is refused instead of run.
- meta.json: step, segment and the SHA-256 of both files; written last, so a checkpoint
  without a valid meta.json is incomplete by construction.
A save writes into a temporary folder, fsyncs every file, renames the folder into place
and fsyncs the parent: a crash at any moment leaves either the old set or the new one.
What a killed save leaves behind (`.tmp-*`, or a replaced step parked as `.old-*`) is named
with the saver's pid and tidied by the next save or load once that process is gone: a parked
step whose replacement never arrived is put back.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

WEIGHTS = "model.safetensors"
STATE = "state.pt"
META = "meta.json"
PREFIX = "step-"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names it and why."""


@dataclass
class Checkpoint:
    path: Path
    step: int
    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]
    meta: dict[str, Any]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return hashlib.sha256(data).hexdigest()


def step_dir_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def save(ckpt_root: str | Path, step: int, tensors: dict[str, torch.Tensor], state: dict[str, Any],
         meta: dict[str, Any] | None = None, keep: int = 3, inject_errno: int | None = None) -> Path:
    """Write one checkpoint atomically and keep only the newest `keep`. Raises OSError (e.g.
    ENOSPC) with nothing half-written left behind.

    `inject_errno` is fault injection for the fault suite: after the weights file is written,
    raise OSError(inject_errno) the way a disk that fills up mid-save would."""
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    clean_leftovers(root)
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{step_dir_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        weights = st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
        buf = io.BytesIO()
        torch.save(state, buf)
        digest = {WEIGHTS: _write(tmp / WEIGHTS, weights)}
        if inject_errno is not None:
            raise OSError(inject_errno, os.strerror(inject_errno))
        digest[STATE] = _write(tmp / STATE, buf.getvalue())
        full_meta = dict(meta or {}, step=step, time=time.time(), sha256=digest)
        _write(tmp / META, json.dumps(full_meta, indent=1).encode())
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. after a rollback): replace it whole
            old = root / f".old-{step_dir_name(step)}-{os.getpid()}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    rotate(root, keep)
    return final


def rotate(ckpt_root: Path, keep: int) -> None:
    found = list_checkpoints(ckpt_root)
    for path in found[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)
    clean_leftovers(ckpt_root)


def _saver_gone(leftover: Path) -> bool:
    """Whether the process named at the end of a `.tmp-`/`.old-` folder is this one or no longer runs."""
    pid = leftover.name.rsplit("-", 1)[-1]
    if not pid.isdigit():
        return True
    if int(pid) == os.getpid():
        return True  # never mid-save while this process saves or loads
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive under another user
    return False


def clean_leftovers(ckpt_root: str | Path) -> None:
    """Tidy what killed saves left: temporary folders go; a step parked as `.old-` while its
    replacement was being renamed in is put back when the replacement never arrived."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return
    for leftover in sorted(root.glob(".old-*")) + sorted(root.glob(".tmp-*")):
        if not _saver_gone(leftover):
            continue  # a live process (the engine) is saving right now
        step_name = leftover.name[len(".old-"):].rsplit("-", 1)[0]
        try:
            if leftover.name.startswith(".old-") and step_name.startswith(PREFIX) and not (root / step_name).exists():
                os.rename(leftover, root / step_name)
                _fsync_dir(root)
            else:
                shutil.rmtree(leftover)
        except OSError:
            pass  # a read-only folder (e.g. `lab eval` on someone else's run): left for the engine


def list_checkpoints(ckpt_root: str | Path) -> list[Path]:
    """Checkpoint folders, oldest first (by step number)."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit():
            out.append(p)
    return sorted(out, key=lambda p: int(p.name[len(PREFIX):]))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load and verify one checkpoint folder; raise CheckpointError naming what is wrong."""
    path = Path(path)
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path.name}: meta.json is missing or unreadable ({exc.__class__.__name__}).") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), dict) or not isinstance(meta.get("step"), int):
        raise CheckpointError(f"checkpoint {path.name}: meta.json lacks its step or checksums.")
    blobs = {}
    for name in (WEIGHTS, STATE):
        try:
            data = (path / name).read_bytes()
        except OSError:
            raise CheckpointError(f"checkpoint {path.name}: {name} is missing.") from None
        if hashlib.sha256(data).hexdigest() != meta["sha256"].get(name):
            raise CheckpointError(f"checkpoint {path.name}: {name} is damaged (checksum mismatch).")
        blobs[name] = data
    try:
        tensors = st_load(blobs[WEIGHTS])
    except Exception as exc:  # safetensors raises its own error types for malformed headers
        raise CheckpointError(f"checkpoint {path.name}: {WEIGHTS} is not a valid safetensors file ({exc}).") from None
    try:
        with warnings.catch_warnings():  # a refused file is reported below, as a sentence, not as torch's warning
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(io.BytesIO(blobs[STATE]), map_location=map_location, weights_only=True)
    except Exception as exc:  # weights_only refuses pickles that would run code
        raise CheckpointError(
            f"checkpoint {path.name}: {STATE} was refused by the safe loader ({str(exc).splitlines()[0][:160]})."
        ) from None
    if map_location != "cpu":
        tensors = {k: v.to(map_location) for k, v in tensors.items()}
    return Checkpoint(path=path, step=meta["step"], tensors=tensors, state=state, meta=meta)


def check_tensors(ckpt: Checkpoint, expected: dict[str, torch.Tensor]) -> None:
    """Raise CheckpointError unless `ckpt` holds exactly the tensors of `expected` (names and shapes):
    a `check` for load_latest, so weights that verify but do not fit the model are skipped."""
    missing = sorted(set(expected) - set(ckpt.tensors))
    extra = sorted(set(ckpt.tensors) - set(expected))
    wrong = [k for k in sorted(set(expected) & set(ckpt.tensors))
             if tuple(ckpt.tensors[k].shape) != tuple(expected[k].shape)]
    if missing:
        raise CheckpointError(f"checkpoint {ckpt.path.name}: tensors the model needs are missing "
                              f"({len(missing)}, first: {missing[0]}).")
    if extra:
        raise CheckpointError(f"checkpoint {ckpt.path.name}: it holds tensors the model does not have "
                              f"({len(extra)}, first: {extra[0]}).")
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"checkpoint {ckpt.path.name}: tensors have the wrong shape ({len(wrong)}, first: "
                              f"{k} is {tuple(ckpt.tensors[k].shape)}, the model's is {tuple(expected[k].shape)}).")


def load_latest(ckpt_root: str | Path, map_location: str | torch.device = "cpu",
                check: Callable[[Checkpoint], None] | None = None) -> tuple[Checkpoint | None, list[str]]:
    """The newest checkpoint that verifies and passes `check`, and a warning for each newer one that did not.

    `check` sees a loaded checkpoint and raises (one sentence) when its contents do not fit the
    run, e.g. `check_tensors` against the model; such a checkpoint is skipped like a damaged one."""
    warnings: list[str] = []
    clean_leftovers(ckpt_root)
    for path in reversed(list_checkpoints(ckpt_root)):
        try:
            ckpt = load(path, map_location)
        except CheckpointError as exc:
            warnings.append(str(exc))
            continue
        if check is None:
            return ckpt, warnings
        try:
            check(ckpt)
        except CheckpointError as exc:
            warnings.append(str(exc))
        except Exception as exc:  # a check may fail any way; the sentence names the checkpoint and why
            warnings.append(f"checkpoint {path.name}: its contents do not fit this run "
                            f"({exc.__class__.__name__}: {str(exc).splitlines()[0][:200] if str(exc) else 'no reason'}).")
        else:
            return ckpt, warnings
    return None, warnings
