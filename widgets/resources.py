"""Resources pane: GPU and VRAM, torch's allocator, RAM of the engine and its children, system RAM, CPU,
and the run's own limits."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


def bar(fraction: float | None, width: int, warn: float = 0.7, alert: float | None = None,
        mark: float | None = None) -> Text:
    """A filled bar; green, then yellow past `warn`, red past `alert`; a tick at `mark` (a limit)."""
    if fraction is None:
        return Text("·" * width, style="grey35")
    f = min(max(fraction, 0.0), 1.0)
    filled = round(f * width)
    color = "red" if alert is not None and f > alert else "yellow" if f > warn else "green"
    cells = [("█", color)] * filled + [("░", "grey27")] * (width - filled)
    if mark is not None and 0.0 < mark < 1.0:
        cells[min(width - 1, int(mark * width))] = ("┃", "bold white")
    text = Text()
    for char, style in cells:
        text.append(char, style)
    return text


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


def _share(v: float) -> str:
    return "off" if v >= 1.0 else f"{v:.0%}"


def resources_table(t: dict | None, width: int = 40, vram_limit: float | None = None,
                    ram_limit: float | None = None) -> Text:
    """The pane's content for one telemetry sample (keys as the engine sends them). The limits are the
    run's own (train.vram_limit, train.ram_limit): fractions of the card's VRAM and of system RAM past
    which the bar turns red and the console alerts; 1 or more is off."""
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
        on = vram_limit if vram_limit is not None and vram_limit < 1.0 else None
        _bar_row(text, "VRAM", frac, f"{mb(used)} / {mb(total)}{pct}", width, alert=on, mark=on)
        _row(text, "torch", Text(f"alloc {mb(t.get('torch_alloc_mb'))} · peak {mb(t.get('torch_peak_mb'))}"))
    else:
        _row(text, "GPU", Text("no GPU", style="bold yellow"), Text("  (VRAM n/a: NVML not available)", style="grey50"))
    _row(text, "engine", Text(f"RAM {mb(t.get('rss_mb'))}"), Text(" with children", style="grey50"))
    used, total = t.get("sys_ram_used_mb"), t.get("sys_ram_total_mb")
    frac = used / total if used is not None and total else None
    on = ram_limit if ram_limit is not None and ram_limit < 1.0 else None
    _bar_row(text, "system", frac, f"{mb(used)} / {mb(total)}", width, warn=0.8,
             alert=0.95 if on is None else on, mark=on)
    cpu, cores = t.get("cpu_percent"), t.get("cpu_count")
    if cpu is None:
        _bar_row(text, "CPU", None, "n/a", width)
    elif cores:  # 100 per busy core: the bar is full when every core the engine may use is busy
        _bar_row(text, "CPU", cpu / (100.0 * cores), f"{cpu / 100:.1f} of {cores} cores", width, warn=0.9)
    else:
        _bar_row(text, "CPU", min(cpu, 100.0) / 100.0, f"{cpu:.0f}% of one core", width, warn=0.9)
    limits = []
    if gpu and vram_limit is not None:
        limits.append(f"VRAM {_share(vram_limit)} (train.vram_limit)")
    if ram_limit is not None:
        limits.append(f"RAM {_share(ram_limit)} (train.ram_limit)")
    if limits:
        _row(text, "limits", Text(" · ".join(limits), style="grey62"))
    text.rstrip()
    return text


class ResourcesPane(Static):
    """Shows the latest telemetry event against the run's limits; `show(data, ...)` replaces them."""

    def __init__(self, **kwargs):
        super().__init__(resources_table(None), **kwargs)
        self.telemetry: dict | None = None
        self.limits: tuple[float | None, float | None] = (None, None)  # (vram, ram)

    def show(self, telemetry: dict | None, vram_limit: float | None = None, ram_limit: float | None = None) -> None:
        if (telemetry, (vram_limit, ram_limit)) == (self.telemetry, self.limits):
            return
        self.telemetry, self.limits = telemetry, (vram_limit, ram_limit)
        self._draw()

    def on_resize(self) -> None:
        self._draw()

    def _draw(self) -> None:
        self.update(resources_table(self.telemetry, self.size.width or 40, *self.limits), layout=False)
