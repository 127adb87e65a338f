"""What a benchmark ran on, for the README tables."""
from __future__ import annotations

import os
import platform

import torch


def machine(threads: int | None = None) -> str:
    """``"<cpu model>, <n> cores, torch <version>, <k> threads"``."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {threads or torch.get_num_threads()} threads"
