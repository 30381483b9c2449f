"""One instruction set for torch's CPU kernels, so that a run computes the same bits on any x86-64 machine.

Three libraries inside torch pick their kernels by the CPU's instruction set, and kernels for different
sets round differently: ATen's vectorised operators, oneDNN's convolutions and MKL's matrix products. A
run recorded on an AVX2 machine and re-executed on an AVX-512 one then differs in the last bits of its
first epoch (`val_loss: recorded 2.1727325916, now 2.1727328300`), and the differences grow. Capping all
three at AVX2, which every x86-64 CPU of the last decade has, removes that one cause. On an AVX2 machine the
cap changes nothing (the same kernels run: measured, identical bits and time); on an AVX-512 machine it gives
up the wider kernels, which matter little for the small models Esper trains on CPU.

It is not enough across CPU makers: the shipped sample, recorded on an AMD EPYC, re-executes on an Intel Xeon
with the first epoch's `val_loss` a bit off and, by the 10th epoch, a validation example decided the other way.
Within a maker's libraries the kernel a size gets also depends on the CPU (oneDNN and MKL choose by it), so
`RunStarted.versions` records the CPU's model (`cpu_model`) and `--verify` names both when they differ.

Each library reads its setting when it first picks a kernel, so this runs when `esper` is imported,
before any training. A variable already set by the user wins (`ATEN_CPU_CAPABILITY=default`, say).
"""

import os

PINNED = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "AVX2",
}


def pin_cpu_kernels() -> None:
    """Set the caps, only where the CPU has AVX2: ATen takes `avx2` at its word, and AVX2 kernels on a CPU
    without it would stop the process with an illegal instruction."""
    if has_avx2():
        for name, value in PINNED.items():
            os.environ.setdefault(name, value)


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
