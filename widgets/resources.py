"""Resources pane: GPU and VRAM, torch's allocator, RAM of the engine and its children, system RAM, CPU."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

VRAM_ALERT_FRACTION = 0.85  # the seeds' threshold; above it the bar turns red


def bar(fraction: float | None, width: int, warn: float = 0.7, alert: float = VRAM_ALERT_FRACTION) -> Text:
    """A filled bar; green, then yellow past `warn`, red past `alert`."""
    if fraction is None:
        return Text("·" * width, style="grey35")
    f = min(max(fraction, 0.0), 1.0)
    filled = round(f * width)
    color = "red" if f > alert else "yellow" if f > warn else "green"
    return Text("█" * filled, style=color) + Text("░" * (width - filled), style="grey27")


def mb(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v / 1024:.1f} GB" if v >= 1024 else f"{v:.0f} MB"


LABEL_W = 8


def _row(text: Text, label: str, *parts: Text | str) -> None:
    text.append(f"{label:<{LABEL_W}}", style="bold grey70")
    for p in parts:
        text.append(p)
    text.append("\n")


def _bar_row(text: Text, label: str, fraction: float | None, figures: str, width: int, **bar_kw) -> None:
    bar_w = max(4, width - LABEL_W - len(figures) - 1)
    _row(text, label, bar(fraction, bar_w, **bar_kw), " " + figures)


def resources_table(t: dict | None, width: int = 40) -> Text:
    """The pane's content for one telemetry sample (keys as the engine sends them)."""
    if not t:
        return Text("waiting for telemetry…", style="dim")
    width = max(width, 24)
    text = Text(no_wrap=True, overflow="ellipsis", end="")
    gpu = t.get("gpu_name") or ("(name n/a)" if t.get("vram_total_mb") else None)
    if gpu:
        _row(text, "GPU", Text(str(gpu), style="bold"))
        used, total = t.get("vram_used_mb"), t.get("vram_total_mb")
        frac = used / total if used is not None and total else None
        pct = f" {frac:4.0%}" if frac is not None else ""
        _bar_row(text, "VRAM", frac, f"{mb(used)} / {mb(total)}{pct}", width)
        _row(text, "torch", Text(f"alloc {mb(t.get('torch_alloc_mb'))} · peak {mb(t.get('torch_peak_mb'))}"))
    else:
        _row(text, "GPU", Text("no GPU", style="bold yellow"), Text("  (VRAM n/a: NVML not available)", style="grey50"))
    _row(text, "engine", Text(f"RAM {mb(t.get('rss_mb'))}"), Text(" with children", style="grey50"))
    used, total = t.get("sys_ram_used_mb"), t.get("sys_ram_total_mb")
    frac = used / total if used is not None and total else None
    _bar_row(text, "system", frac, f"{mb(used)} / {mb(total)}", width, warn=0.8, alert=0.95)
    cpu = t.get("cpu_percent")
    cores = t.get("cpu_count")
    frac = cpu / (100.0 * cores) if cpu is not None and cores else (min(cpu, 100.0) / 100.0 if cpu is not None else None)
    _bar_row(text, "CPU", frac, "n/a" if cpu is None else f"{cpu:.0f}%", width, warn=0.9, alert=2.0)
    text.rstrip()
    return text


class ResourcesPane(Static):
    """Shows the latest telemetry event; `show(data)` replaces it."""

    def __init__(self, **kwargs):
        super().__init__(resources_table(None), **kwargs)
        self.telemetry: dict | None = None

    def show(self, telemetry: dict | None) -> None:
        if telemetry == self.telemetry:
            return
        self.telemetry = telemetry
        self.update(resources_table(telemetry, self.size.width or 40), layout=False)

    def on_resize(self) -> None:
        self.update(resources_table(self.telemetry, self.size.width or 40), layout=False)
