"""What the command line says of errors that are not Esper's own: allocations that fail."""

import pytest
import torch

from esper.errors import out_of_memory

CPU = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
       "allocate 308000000000 bytes. Error code 12 (Cannot allocate memory)")


@pytest.mark.parametrize("exc, said", [
    (RuntimeError(CPU), "out of memory: 286.8 GiB could not be allocated (a smaller model or batch needs less)"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has a total capacity of 80 GiB"),
     "out of memory: 2.50 GiB could not be allocated (a smaller model or batch needs less)"),
    (RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"), "out of memory"),
    (MemoryError(), "out of memory"),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), "out of memory"),
    (OSError(12, "Cannot allocate memory"), "out of memory"),
    (MemoryError("Unable to allocate 8.00 PiB for an array with shape (2**50,) and data type float64"),
     "out of memory: 8.00 PiB could not be allocated (a smaller model or batch needs less)"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1200000000000000 bytes."),
     "out of memory: 1.1 PiB could not be allocated (a smaller model or batch needs less)"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 3000 bytes."),
     "out of memory: 2.9 KiB could not be allocated (a smaller model or batch needs less)"),
])
def test_a_failed_allocation_is_said_in_one_line(exc, said):
    assert out_of_memory(exc) == said


@pytest.mark.parametrize("exc", [RuntimeError("mat1 and mat2 shapes cannot be multiplied"), ValueError("out of memory"),
                                 KeyError("memory"), OSError(28, "No space left on device")])
def test_other_errors_are_not_taken_for_memory(exc):
    assert out_of_memory(exc) is None
