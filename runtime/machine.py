"""The machine a measurement ran on: CPU model, cores, platform, GPU (what must match for two runs'
latencies to be comparable)."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch


def _lscpu() -> dict[str, str]:
    """``lscpu``'s fields (empty where it is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in out.splitlines()) if v}


def machine() -> dict:
    """``{"cpu", "cores", "platform", "cuda", "lscpu"}``: the CPU model name as lscpu (else /proc/cpuinfo)
    gives it, logical cores, the platform string, the first CUDA device's name (None without one), and
    what lscpu says of vendor, hypervisor, sockets and cores per socket."""
    info = _lscpu()
    cpu = info.get("Model name") or platform.processor() or ""
    if not info:
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    keys = ("Vendor ID", "Model name", "CPU(s)", "Socket(s)", "Core(s) per socket", "Thread(s) per core", "Hypervisor vendor")
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "lscpu": {k: info[k] for k in keys if k in info}}
