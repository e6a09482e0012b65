"""The RuntimeDefault seccomp profile: allow by default, refuse what lets a container reach the kernel
or the host beyond its namespaces, unless the container holds the capability that call needs anyway.

A deny list (rather than Docker's long allow list) keeps the profile short and new harmless syscalls
working; the list follows the calls Docker's default profile gates behind capabilities.
"""

from __future__ import annotations

from typing import Any

EPERM = 1
ENOSYS = 38
CLONE_NEWUSER = 0x10000000

# Syscalls refused unless the container holds the capability named by the key ("" = never allowed).
GATED: dict[str, list[str]] = {
    "": ["create_module", "get_kernel_syms", "query_module", "nfsservctl", "uselib", "ustat",
         "sysfs", "_sysctl", "vm86", "vm86old", "lookup_dcookie", "userfaultfd", "kexec_file_load",
         "kexec_load", "add_key", "request_key", "keyctl"],
    "SYS_ADMIN": ["mount", "umount", "umount2", "unshare", "setns", "pivot_root", "quotactl",
                  "name_to_handle_at", "open_by_handle_at", "open_tree", "move_mount", "fsopen",
                  "fsconfig", "fsmount", "fspick", "bpf", "perf_event_open", "fanotify_init",
                  "mbind", "set_mempolicy", "get_mempolicy", "move_pages"],
    "SYS_MODULE": ["init_module", "finit_module", "delete_module"],
    "SYS_BOOT": ["reboot"],
    "SYS_TIME": ["settimeofday", "stime", "clock_settime", "clock_adjtime", "adjtimex"],
    "SYS_PACCT": ["acct"],
    "SYS_RAWIO": ["iopl", "ioperm"],
    "SYS_PTRACE": ["kcmp"],
    "SYSLOG": ["syslog"],
}


ARCHITECTURES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
}


def default_profile(capabilities: list[str], machine: str) -> dict[str, Any]:
    """The OCI `linux.seccomp` object for RuntimeDefault, given the bounding set and `uname -m`."""
    held = {c.removeprefix("CAP_") for c in capabilities}
    denied = sorted({call for cap, calls in GATED.items() if cap not in held for call in calls})
    syscalls: list[dict[str, Any]] = [
        {"names": denied, "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM},
        # ENOSYS makes libc fall back to clone(2), where namespace flags can be checked.
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
    ]
    if "SYS_ADMIN" not in held:
        syscalls.append({
            "names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM,
            "args": [{"index": 0, "value": CLONE_NEWUSER, "valueTwo": CLONE_NEWUSER,
                      "op": "SCMP_CMP_MASKED_EQ"}],
        })
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ARCHITECTURES.get(machine, []),
        "syscalls": syscalls,
    }
