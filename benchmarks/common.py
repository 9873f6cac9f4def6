"""What the benchmark scripts share: a description of the machine they ran on."""

import os
import re
from pathlib import Path
from typing import Any

import torch


def machine() -> dict[str, Any]:
    """CPU model, core count, torch version and GPU (None without CUDA), for a result's header."""
    cpu = "unknown CPU"
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "gpu": gpu}
