"""The machine a measurement ran on: CPU model, cores, platform, GPU (what must match for two runs'
latencies to be comparable)."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def machine() -> dict:
    """``{"cpu", "cores", "platform", "cuda"}``: the CPU model name (from /proc/cpuinfo), logical cores,
    the platform string and the first CUDA device's name (None without one)."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
