"""Hardware counters of the calling thread (Linux ``perf_event_open``), for noise-free deltas.

CPU time on a shared two-core machine moves by more than the mesh costs; the number of
user-space instructions a thread retires does not (two runs of the same code agree within
0.01 %). Benchmarks report it next to CPU time when the kernel allows it
(``/proc/sys/kernel/perf_event_paranoid`` ≤ 2 and a PMU visible to the process).
"""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import signal
import struct
import subprocess
import time

__all__ = ["InstructionCounter", "ProcessInstructions", "instruction_counter"]

_SYSCALL = {"x86_64": 298, "aarch64": 241}
_PERF_TYPE_HARDWARE = 0
_PERF_COUNT_HW_INSTRUCTIONS = 1
_EXCLUDE_KERNEL = 1 << 5
_EXCLUDE_HV = 1 << 6


class InstructionCounter:
    """User-space instructions retired by the thread that created it."""

    def __init__(self) -> None:
        number = _SYSCALL.get(platform.machine())
        if number is None:
            raise OSError(f"perf_event_open: unknown syscall number on {platform.machine()}")
        # struct perf_event_attr, PERF_ATTR_SIZE_VER0 (64 bytes): type, size, config,
        # sample_period, sample_type, read_format, flag bits, wakeup_events, bp_type, config1
        attr = struct.pack(
            "IIQQQQQIIQ",
            _PERF_TYPE_HARDWARE,
            64,
            _PERF_COUNT_HW_INSTRUCTIONS,
            0,
            0,
            0,
            _EXCLUDE_KERNEL | _EXCLUDE_HV,
            0,
            0,
            0,
        )
        libc = ctypes.CDLL(None, use_errno=True)
        buffer = ctypes.create_string_buffer(attr, len(attr))
        fd = libc.syscall(number, buffer, 0, -1, -1, 0)  # this thread, any CPU, no group
        if fd < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"perf_event_open: {os.strerror(errno)}")
        self._fd = int(fd)

    def read(self) -> int:
        return int(struct.unpack("Q", os.read(self._fd, 8))[0])

    def close(self) -> None:
        os.close(self._fd)


def instruction_counter() -> InstructionCounter | None:
    """A counter for this thread, or None where the kernel does not offer one."""
    try:
        return InstructionCounter()
    except OSError:
        return None


class ProcessInstructions:
    """User-space instructions retired by another process (all its threads) while the block
    runs, counted by ``perf stat -p``; :attr:`count` is None where perf is not available.

        with ProcessInstructions(pid) as counted:
            run_load()
        print(counted.count)
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.count: int | None = None
        self._perf: subprocess.Popen[str] | None = None

    def __enter__(self) -> ProcessInstructions:
        perf = shutil.which("perf")
        if perf is not None:
            self._perf = subprocess.Popen(
                [perf, "stat", "-e", "instructions:u", "-x", ",", "-p", str(self.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(0.1)  # let it attach before the load starts
        return self

    def __exit__(self, *exc_info: object) -> None:
        perf, self._perf = self._perf, None
        if perf is None:
            return
        perf.send_signal(signal.SIGINT)
        try:
            _, err = perf.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            perf.kill()
            perf.communicate()
            return
        for line in err.splitlines():
            value, _, rest = line.partition(",")
            if "instructions" in rest and value.strip().isdigit():
                self.count = int(value)
