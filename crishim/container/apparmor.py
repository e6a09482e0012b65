"""A container's AppArmor profile, decided as containerd decides it.

Where the kernel has no AppArmor, asking for any profile but Unconfined fails loudly rather than running
the container unconfined. Where it has, a Localhost profile must be loaded already and is handed to the
runtime by name (process.apparmorProfile, which execs inherit). crishim ships no default profile: an
explicit RuntimeDefault is refused on such a node (privileged containers get none anyway), and a
container that asks for nothing runs without one (containerd would load its own default there).
"""

from __future__ import annotations

from pathlib import Path

from crishim.container.model import AppArmorKind
from crishim.errors import FailedPrecondition, InvalidArgument

ENABLED_PARAMETER = Path("/sys/module/apparmor/parameters/enabled")
SECURITYFS_DIR = Path("/sys/kernel/security/apparmor")
FIELD = "config.linux.security_context.apparmor"


def host_enabled(parameter: Path = ENABLED_PARAMETER, securityfs: Path = SECURITYFS_DIR) -> bool:
    """runc's and containerd's test: AppArmor's securityfs is there and the module says Y."""
    try:
        return securityfs.is_dir() and parameter.read_text().startswith("Y")
    except OSError:
        return False


def loaded_profiles(securityfs: Path = SECURITYFS_DIR) -> set[str]:
    """Names of the loaded profiles; `profiles` lists one per line as `NAME (MODE)`."""
    text = (securityfs / "profiles").read_text()
    return {line.rsplit(" (", 1)[0] for line in text.splitlines() if " (" in line}


def process_profile(kind: AppArmorKind, ref: str, privileged: bool, enabled: bool,
                    securityfs: Path = SECURITYFS_DIR) -> str:
    """The profile to run the container under ("" for none); reads the loaded list when needed."""
    if kind in (AppArmorKind.UNSET, AppArmorKind.UNCONFINED):
        return ""
    if not enabled:
        raise FailedPrecondition(f"{FIELD}: apparmor is not supported: AppArmor is not enabled on this "
                                 f"node, so profile type {kind} cannot be applied (use Unconfined)")
    if kind == AppArmorKind.RUNTIME_DEFAULT:
        if privileged:
            return ""
        raise FailedPrecondition(f"{FIELD}: crishim has no RuntimeDefault AppArmor profile; name a "
                                 "loaded one with Localhost")
    if not ref:
        raise InvalidArgument(f"{FIELD}: profile type Localhost needs a profile name")
    try:
        loaded = loaded_profiles(securityfs)
    except OSError as exc:
        raise FailedPrecondition(f"{FIELD}: cannot list the loaded AppArmor profiles: {exc}") from exc
    if ref not in loaded:
        raise FailedPrecondition(f"{FIELD}: apparmor profile not found {ref!r} (not loaded on this node)")
    return ref
