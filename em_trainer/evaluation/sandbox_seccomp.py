"""The sandbox's system-call filter: a classic BPF program for seccomp, written here so that no library is needed.

A candidate needs the interpreter and the standard library; it has no use for the calls that reach state outside its
sandbox or past its limits. The filter refuses them with ``EPERM`` (the program sees an ordinary ``OSError``):

- kernel keyrings (``add_key``, ``request_key``, ``keyctl``): keys outlive the process and are shared by a user;
- new namespaces (``unshare``, ``setns``, ``clone`` with a namespace flag) and mounts: a user namespace of its own
  would make the candidate root there, free to mount a tmpfs past its disk limit;
- System V IPC (``shmget``, ``msgget``, ``semget``) and ``memfd_create``: memory that no address-space limit counts,
  and (for System V) that outlives every process;
- ``bpf``, ``perf_event_open``, ``userfaultfd``, ``io_uring_setup``: kernel attack surface a program never needs.

``clone3`` answers ``ENOSYS`` (its flags sit in memory a filter cannot read), so the C library falls back to
``clone``, whose flags it can. The program is used by bubblewrap (``--seccomp FD``) and, in root mode, installed by
``sandbox_programs/seccomp_exec.py`` just before the candidate's interpreter starts.
"""

from __future__ import annotations

import errno
import platform
import struct

# Syscall numbers per architecture (x86_64 from arch/x86/entry/syscalls/syscall_64.tbl, aarch64 from the generic
# table): name -> number. ``clone`` and ``clone3`` are handled apart.
_SYSCALLS = {
    "x86_64": {
        "add_key": 248, "request_key": 249, "keyctl": 250, "unshare": 272, "setns": 308, "mount": 165,
        "umount2": 166, "pivot_root": 155, "chroot": 161, "open_tree": 428, "move_mount": 429, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442, "shmget": 29, "semget": 64,
        "msgget": 68, "memfd_create": 319, "memfd_secret": 447, "bpf": 321, "perf_event_open": 298,
        "userfaultfd": 323, "io_uring_setup": 425, "clone": 56, "clone3": 435,
    },
    "aarch64": {
        "add_key": 217, "request_key": 218, "keyctl": 219, "unshare": 97, "setns": 268, "mount": 40,
        "umount2": 39, "pivot_root": 41, "chroot": 51, "open_tree": 428, "move_mount": 429, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442, "shmget": 194, "semget": 190,
        "msgget": 186, "memfd_create": 279, "memfd_secret": 447, "bpf": 280, "perf_event_open": 241,
        "userfaultfd": 282, "io_uring_setup": 425, "clone": 220, "clone3": 435,
    },
}  # fmt: skip
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
# CLONE_NEWTIME, CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, NEWNET
NAMESPACE_FLAGS = 0x00000080 | 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
X32_SYSCALL_BIT = 0x40000000

# BPF opcodes (linux/filter.h, linux/seccomp.h).
_LD_W_ABS, _JEQ_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
_RET_KILL_PROCESS, _RET_ERRNO, _RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
_NR, _ARCH, _ARG0_LOW = 0, 4, 16  # offsets in struct seccomp_data (little-endian: arg 0's low word first)


def supported() -> bool:
    """Whether this machine's architecture has a filter here."""
    return platform.machine() in _SYSCALLS


def blocked_calls() -> list[str]:
    """The names of the calls the filter refuses outright (``clone`` only with a namespace flag)."""
    return sorted(name for name in _SYSCALLS["x86_64"] if name not in ("clone", "clone3"))


def filter_program(machine: str | None = None) -> bytes:
    """The filter as ``struct sock_filter`` records, ready for ``bwrap --seccomp`` or ``PR_SET_SECCOMP``."""
    machine = machine or platform.machine()
    if machine not in _SYSCALLS:
        raise OSError(f"no system-call filter for the {machine} architecture (x86_64 and aarch64 have one)")
    numbers = _SYSCALLS[machine]
    program: list[tuple[int, int, int, int]] = [
        (_LD_W_ABS, 0, 0, _ARCH),
        (_JEQ_K, 1, 0, _AUDIT_ARCH[machine]),
        (_RET_K, 0, 0, _RET_KILL_PROCESS),  # another ABI (32-bit) has other numbers: refuse it whole
        (_LD_W_ABS, 0, 0, _NR),
    ]
    if machine == "x86_64":
        program += [(_JGE_K, 0, 1, X32_SYSCALL_BIT), (_RET_K, 0, 0, _RET_KILL_PROCESS)]
    for name in blocked_calls():
        program += [(_JEQ_K, 0, 1, numbers[name]), (_RET_K, 0, 0, _RET_ERRNO | errno.EPERM)]
    program += [
        (_JEQ_K, 0, 1, numbers["clone3"]),
        (_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS),
        (_JEQ_K, 0, 4, numbers["clone"]),
        (_LD_W_ABS, 0, 0, _ARG0_LOW),
        (_JSET_K, 0, 1, NAMESPACE_FLAGS),
        (_RET_K, 0, 0, _RET_ERRNO | errno.EPERM),
        (_RET_K, 0, 0, _RET_ALLOW),
        (_RET_K, 0, 0, _RET_ALLOW),
    ]
    return b"".join(struct.pack("<HBBI", *instruction) for instruction in program)
