"""Which CPU kernels torch computes with, so that a run computes the same bits on any x86-64 CPU with AVX2.

Three libraries inside torch pick their kernels by the CPU, and different kernels round differently: ATen's
vectorised operators (by instruction set), oneDNN's convolutions (by instruction set and cache sizes) and MKL's
matrix products (by instruction set and maker: MKL's AVX2 branch exists on Intel CPUs only, an AMD one takes
its own). A run recorded on one CPU and re-executed on another then differs in the last bits of its first
epoch (`val_loss: recorded 2.1727325916, now 2.1727328300`), and the differences grow until a validation
example, and then a decision, goes the other way.

`ESPER_CPU_KERNELS` chooses one of two kernel sets, for the whole process:

* `portable` (the default): ATen's AVX2 kernels, MKL's COMPATIBLE branch (the one MKL keeps identical on
  Intel and AMD CPUs), and neither oneDNN nor NNPACK (torch's own convolutions then multiply through MKL).
  A run re-executes bit for bit on any x86-64 CPU with AVX2, with the same torch and thread count. It costs
  little on mnist1d's small convolutions (an epoch ×1.1, measured on an AMD EPYC) and more for the bigger hosts
  on CPU: a training step of the transformer ×1.4, of the ResNet ×3 (`benchmarks/kernels.py`).
* `fast`: the same ATen kernels, MKL's AVX2 branch and oneDNN capped at AVX2 (Esper's kernels before the
  portable set existed: older logs were computed with these). Bit for bit only on the same CPU model.

Each library reads its setting when it first picks a kernel, so `pin_cpu_kernels` runs when `esper` is
imported, before any training; a variable the user already set wins (`MKL_CBWR=AUTO`, say), and the kernel set
a run records (`RunStarted.versions["cpu_kernels"]`) then names it. oneDNN and NNPACK are torch flags, set when
a CPU run starts (`use_cpu_kernels`).
"""

import os

from esper.errors import BadInput

KERNEL_SETS: dict[str, dict[str, str]] = {
    "portable": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE"},
    "fast": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"},
}
"""Each kernel set's library settings (environment variables). Only `fast` lets torch use oneDNN and NNPACK (so
`portable` has no setting for oneDNN)."""

DEFAULT_KERNELS = "portable"

RECORDED_BEFORE_KERNEL_SETS = "fast"
"""The kernel set of a run logged with versions but before runs recorded their set: `fast`'s were Esper's settings."""


def kernel_set() -> str:
    """The kernel set `ESPER_CPU_KERNELS` names (default `portable`); one line for a name Esper does not know."""
    if (name := _named()) not in KERNEL_SETS:
        raise BadInput(f"ESPER_CPU_KERNELS={name}: not a kernel set (use {' or '.join(KERNEL_SETS)})")
    return name


def pin_cpu_kernels() -> None:
    """Set the kernel set's variables, only where the CPU has AVX2: ATen takes `avx2` at its word, and AVX2
    kernels on a CPU without it would stop the process with an illegal instruction. An unknown set pins nothing
    here (importing esper does not fail): a run says what is wrong before it starts (`kernel_set`)."""
    if has_avx2() and (name := _named()) in KERNEL_SETS:
        for variable, value in KERNEL_SETS[name].items():
            os.environ.setdefault(variable, value)


def use_cpu_kernels() -> None:
    """Turn torch's oneDNN and NNPACK on or off as the kernel set says; call it before a CPU run computes.
    Process-wide torch flags, like the thread count."""
    import torch

    native = kernel_set() == "fast"
    torch.backends.mkldnn.enabled = native
    torch.backends.nnpack.set_flags(native)


def kernel_environment() -> dict[str, str]:
    """The variables that give another process (a Ray worker on another machine) this one's kernel set."""
    name = kernel_set()
    return {"ESPER_CPU_KERNELS": name} | {v: os.environ[v] for v in KERNEL_SETS[name] if v in os.environ}


def cpu_kernels() -> str:
    """What this process computes with on CPU, as a run records it: the kernel set's name, followed by each of its
    variables set otherwise (`portable (MKL_CBWR=AUTO)`)."""
    name = kernel_set()
    changed = [f"{variable}={os.environ.get(variable, '')}" for variable, value in KERNEL_SETS[name].items()
               if os.environ.get(variable) != value]
    return f"{name} ({', '.join(changed)})" if changed else name


def _named() -> str:
    return os.environ.get("ESPER_CPU_KERNELS") or DEFAULT_KERNELS


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what the platform says, else "unknown"."""
    if (model := _cpuinfo("model name")) is not None:
        return model
    import platform

    return platform.processor() or "unknown"


def has_avx2() -> bool:
    """Whether the CPU reports AVX2 (Linux's /proc/cpuinfo; elsewhere unknown, so no)."""
    return "avx2" in (_cpuinfo("flags") or "").split()


def _cpuinfo(key: str) -> str | None:
    """The value of the first CPU's `key` in Linux's /proc/cpuinfo; None where there is no such file or line."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None
