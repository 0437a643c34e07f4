"""Resource figures: RAM/CPU of the engine and its children (psutil), system RAM, VRAM through
NVML (`nvidia-ml-py`, imported as `pynvml`) and torch's allocator. Every GPU figure degrades to
None ("n/a") when there is no GPU or NVML cannot load."""

from __future__ import annotations

import os
from typing import Any

import psutil
import torch

MB = 1024 * 1024


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the OS has one, else every core. At 100 per
    busy core, cpu_percent reaches 100 x this when all of them are busy."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return psutil.cpu_count(logical=True) or 1


class Telemetry:
    def __init__(self, device: torch.device, pid: int | None = None):
        self.device = device
        self.proc = psutil.Process(pid or os.getpid())
        self.proc.cpu_percent(None)  # prime: the first call always returns 0
        self._children_cpu: dict[int, psutil.Process] = {}
        self._nvml = None
        self._handle = None
        self.gpu_name: str | None = None
        if device.type == "cuda":
            self._init_nvml()

    def _init_nvml(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(self._handle)
            self.gpu_name = name.decode() if isinstance(name, bytes) else name
            self._nvml = pynvml
        except Exception:  # NVML missing or no driver: VRAM figures become n/a
            self._nvml = None
            self._handle = None
            self.gpu_name = torch.cuda.get_device_name(self.device) if torch.cuda.is_available() else None

    def sample(self) -> dict[str, Any]:
        rss = self.proc.memory_info().rss
        cpu = self.proc.cpu_percent(None)
        for child in self.proc.children(recursive=True):
            try:
                rss += child.memory_info().rss
                known = self._children_cpu.setdefault(child.pid, child)
                cpu += known.cpu_percent(None)
            except psutil.Error:
                pass
        vm = psutil.virtual_memory()
        out: dict[str, Any] = {
            "rss_mb": rss / MB,
            "cpu_percent": cpu,
            "cpu_count": usable_cores(),
            "sys_ram_used_mb": (vm.total - vm.available) / MB,
            "sys_ram_total_mb": vm.total / MB,
            "gpu_name": self.gpu_name,
            "vram_used_mb": None,
            "vram_total_mb": None,
            "torch_alloc_mb": None,
            "torch_peak_mb": None,
        }
        if self._nvml is not None:
            try:
                info = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
                out["vram_used_mb"] = info.used / MB
                out["vram_total_mb"] = info.total / MB
            except Exception:
                pass
        if self.device.type == "cuda":
            out["torch_alloc_mb"] = torch.cuda.memory_allocated(self.device) / MB
            out["torch_peak_mb"] = torch.cuda.max_memory_allocated(self.device) / MB
            if out["vram_total_mb"] is None:
                out["vram_total_mb"] = torch.cuda.get_device_properties(self.device).total_memory / MB
        return out

    def vram_fraction(self) -> float | None:
        s = self.sample()
        if s["vram_used_mb"] is None or not s["vram_total_mb"]:
            return None
        return s["vram_used_mb"] / s["vram_total_mb"]

    @staticmethod
    def ram_used_fraction() -> float:
        """Used / total RAM of the machine (what other processes hold included), cheap enough for every step."""
        vm = psutil.virtual_memory()
        return (vm.total - vm.available) / vm.total

    def vram_used_fraction(self) -> float | None:
        """Used / total memory of the card, read cheaply enough for every step; None without a GPU."""
        if self.device.type != "cuda":
            return None
        if self._nvml is not None:
            try:
                info = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
                return info.used / info.total if info.total else None
            except Exception:  # NVML can fail transiently; the allocator's view below still answers
                pass
        free, total = torch.cuda.mem_get_info(self.device)
        return (total - free) / total if total else None
