"""Measured memory: CUDA allocator peak on GPU, process RSS high-water mark on CPU, always labelled."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass
class PeakReading:
    peak_bytes: int = 0
    device: str = "cpu_rss_hwm"


def _vm_hwm_bytes() -> int:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_vm_hwm() -> bool:
    """Reset the kernel's RSS high-water mark for this process (Linux: write 5 to clear_refs)."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[PeakReading]:
    """Peak memory of the block: ``max_memory_allocated`` on CUDA (reset first), else the RSS high-water mark.

    On CPU the figure is process-wide (libraries and weights included) and labelled ``cpu_rss_hwm``;
    it is a coarse number, never mixed with the CUDA one because the label travels with it.
    """
    reading = PeakReading()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        reading.device = f"cuda_allocator:{torch.cuda.get_device_name(device)}"
        try:
            yield reading
        finally:
            torch.cuda.synchronize(device)
            reading.peak_bytes = int(torch.cuda.max_memory_allocated(device))
        return
    reading.device = "cpu_rss_hwm" if _reset_vm_hwm() else "cpu_rss_lifetime_max"
    try:
        yield reading
    finally:
        reading.peak_bytes = _vm_hwm_bytes()
