"""The floating-point precision a model runs in: ``--dtype auto|fp32|bf16|fp16``.

Weights and optimizer states stay fp32 whatever is chosen; bf16 and fp16 autocast the forward
passes (log-softmax stays fp32), and fp16 training scales its loss so that small gradients do
not flush to zero. ``auto`` picks bf16 only where the device runs it natively:

- a CUDA device with bf16 (Ampere and newer): bf16; an older one: fp16 with a gradient scaler;
- a CPU with AVX512-BF16 or AMX-BF16 (x86) or BF16 instructions (Arm), that oneDNN will use
  (``ONEDNN_MAX_CPU_ISA`` can forbid them): bf16;
- anything else: fp32. On a CPU without native bf16, torch emulates it and a bf16 matmul runs
  one to two orders of magnitude slower than fp32 (measured: about 1 GFLOP/s against 85 on an
  AVX2-only AMD EPYC).

An explicit ``bf16`` or ``fp16`` that the device does not run natively is honoured after a
warning that gives the slowdown measured on this machine (a few small matmuls, cached per
machine under ``DPOKIT_CACHE``).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import time
from dataclasses import dataclass

import torch

from dpokit.errors import UserError
from dpokit.store.atomic import write_text_atomic
from dpokit.store.cache import cache_root

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ISA_FLAGS = ("avx2", "avx512_f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16", "bf16", "sve_bf16")
"""The CPU features that decide how fast each precision runs (torch.cpu.get_capabilities names)."""


@dataclass(frozen=True)
class Precision:
    name: str
    """fp32, bf16 or fp16."""
    reason: str
    """Why it was picked, for the one line a run prints."""

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    def autocast(self, device: torch.device):
        """Autocast factory for forward passes. Precision is not handed to accelerate, whose state
        is a process-wide singleton, so runs in different precisions can follow each other."""
        return functools.partial(torch.autocast, device_type=device.type, dtype=self.dtype,
                                 enabled=self.name != "fp32")

    def scaler(self, device: torch.device) -> torch.amp.GradScaler | None:
        """fp16 training's loss scaler (bf16 has fp32's range and needs none)."""
        return torch.amp.GradScaler(device.type) if self.name == "fp16" else None


def cpu_info() -> dict:
    """What the figures of a CPU run depend on: model, ISA flags, torch's kernels, threads."""
    return {**_cpu(), "threads": torch.get_num_threads()}


def machine_info(device: torch.device, precision: Precision, processes: int = 1) -> dict:
    """The machine a run ran on, as ``machine.json`` records it: the CPU (``cpu_info``), the device
    and, on a GPU, its name and compute capability, the precision picked, processes, Python."""
    info = {**cpu_info(), "device": str(device), "processes": processes, "precision": precision.name,
            "precision_reason": precision.reason, "python": platform.python_version(),
            "platform": platform.platform(), "host": platform.node()}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        info["gpu"] = torch.cuda.get_device_name(index)
        info["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(index)))
        info["cuda"] = torch.version.cuda
    return info


@functools.cache
def _cpu() -> dict:
    caps = torch.cpu.get_capabilities()
    mkldnn = torch.backends.mkldnn.is_available()
    return {"cpu": _cpu_name(caps), "flags": [f for f in ISA_FLAGS if caps.get(f) is True],
            "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_bf16": bool(mkldnn and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
            "onednn_fp16": bool(mkldnn and torch.ops.mkldnn._is_mkldnn_fp16_supported()), "torch": torch.__version__}


def _cpu_name(caps) -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return str(caps.get("cpu_name") or platform.processor() or platform.machine())


def native_on_cpu(name: str) -> bool:
    """Whether this CPU has instructions for ``name`` (bf16 or fp16) that torch's kernels use."""
    info = _cpu()
    flags = set(info["flags"])
    if name == "bf16":
        return bool(flags & {"avx512_bf16", "amx_bf16", "bf16", "sve_bf16"}) and info["onednn_bf16"]
    if name == "fp16":
        return bool(flags & {"avx512_fp16", "amx_fp16"}) and info["onednn_fp16"]
    return True


def resolve(requested: str, device_type: str = "cpu") -> Precision:
    """The precision a run on ``device_type`` uses when ``requested`` (auto, fp32, bf16 or fp16).
    ``auto`` takes ``$DPOKIT_DTYPE`` when it is set (a machine's standing choice), else decides
    from the hardware."""
    chosen = os.environ.get("DPOKIT_DTYPE", "auto") if requested == "auto" else requested
    if chosen not in ("auto", *DTYPES):
        where = "DPOKIT_DTYPE" if requested == "auto" else "--dtype"
        raise UserError(f"must be auto, fp32, bf16 or fp16; got {chosen!r}", where=where)
    precision = _resolve(chosen, device_type)
    if chosen != requested:
        return Precision(precision.name, precision.reason.replace("asked for", f"DPOKIT_DTYPE={chosen}", 1))
    return precision


@functools.cache
def _resolve(requested: str, device_type: str) -> Precision:
    if requested != "auto":
        return Precision(requested, "asked for" + _warning(requested, device_type))
    if device_type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return Precision("bf16", f"{torch.cuda.get_device_name()} runs bf16 natively")
        return Precision("fp16", f"{torch.cuda.get_device_name()} has no bf16; fp16 with a loss scaler")
    if device_type != "cpu":
        return Precision("fp32", f"the {device_type} device: fp32 unless asked otherwise")
    info = _cpu()
    if native_on_cpu("bf16"):
        native = [f for f in info["flags"] if "bf16" in f]
        return Precision("bf16", f"{info['cpu']} runs bf16 natively ({', '.join(native)})")
    return Precision("fp32", f"{info['cpu']} has no native bf16 ({info['torch_capability']}; no avx512_bf16 or "
                             "amx_bf16 that oneDNN uses), where bf16 would be emulated")


def _warning(name: str, device_type: str) -> str:
    """A warning (starting with ';') when ``name`` runs emulated on this device, else ''."""
    if name == "fp32":
        return ""
    if device_type == "cuda" and name == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        return "; warning: this GPU has no native bf16 (emulated: slow); --dtype auto picks fp16"
    if device_type != "cpu" or native_on_cpu(name):
        return ""
    slower = slowdown(name)
    return (f"; warning: {cpu_info()['cpu']} has no native {name}: a {name} matmul ran {slower:.0f}x slower than "
            "fp32 here; --dtype auto picks fp32")


def slowdown(name: str) -> float:
    """fp32 matmul speed / ``name`` matmul speed on this CPU, measured once per machine and cached."""
    info = cpu_info()
    key = json.dumps([info, name, os.environ.get("ONEDNN_MAX_CPU_ISA"), os.environ.get("ATEN_CPU_CAPABILITY")])
    path = cache_root() / "hardware.json"
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cached = {}
    if key not in cached:
        cached[key] = matmul_flops("fp32", 512) / matmul_flops(name, 512)
        try:
            write_text_atomic(path, json.dumps(cached))
        except UserError:
            pass  # a read-only cache only costs the measurement next time
    return cached[key]


def matmul_flops(name: str, n: int = 2048, reps: int = 3, device: str = "cpu") -> float:
    """Best FLOP/s of an n³ matmul in precision ``name`` on ``device``."""
    a, b = (torch.randn(n, n, device=device, dtype=DTYPES[name]) for _ in range(2))
    best = float("inf")
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best
