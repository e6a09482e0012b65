"""Which capabilities a container gets when the node itself does not hold every one the kernel knows."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crishim.container.ocispec import (
    ALL_CAPABILITIES,
    DEFAULT_CAPABILITIES,
    capabilities,
    held_capabilities,
)
from crishim.errors import FailedPrecondition, InvalidArgument

# This machine's root: everything up to CAP_CHECKPOINT_RESTORE but CAP_SYS_RESOURCE (bit 24).
NODE_STATUS = ("Name:\tcrishim\nCapInh:\t0000000000000000\nCapPrm:\t000001fffeffffff\n"
               "CapEff:\t000001fffeffffff\nCapBnd:\t000001fffeffffff\nCapAmb:\t0000000000000000\n")
WITHOUT_SYS_RESOURCE = [c for c in ALL_CAPABILITIES if c != "CAP_SYS_RESOURCE"]


def test_held_capabilities_reads_the_effective_and_bounding_sets() -> None:
    assert held_capabilities(NODE_STATUS) == WITHOUT_SYS_RESOURCE
    # Bits the kernel knows beyond our names are left out; a cap must be in both sets.
    status = "CapEff:\tffffffffffffffff\nCapBnd:\t0000000000003001\n"
    assert held_capabilities(status) == ["CAP_CHOWN", "CAP_NET_ADMIN", "CAP_NET_RAW"]
    assert held_capabilities("CapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\n") == []
    with pytest.raises(ValueError):
        held_capabilities("Name:\tx\n")


def test_held_capabilities_of_this_process() -> None:
    status = Path("/proc/self/status").read_text()
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if line.startswith("Cap"))
    mask = int(fields["CapEff"], 16) & int(fields["CapBnd"], 16)
    held = held_capabilities(status)
    assert all(mask >> ALL_CAPABILITIES.index(c) & 1 for c in held)
    assert len(held) == bin(mask & ((1 << len(ALL_CAPABILITIES)) - 1)).count("1")


def test_privileged_and_add_all_grant_what_the_node_holds() -> None:
    assert capabilities([], [], True, WITHOUT_SYS_RESOURCE) == WITHOUT_SYS_RESOURCE
    assert capabilities(["ALL"], [], False, WITHOUT_SYS_RESOURCE) == WITHOUT_SYS_RESOURCE
    assert capabilities(["all"], ["SYS_ADMIN"], False, WITHOUT_SYS_RESOURCE) == \
        [c for c in WITHOUT_SYS_RESOURCE if c != "CAP_SYS_ADMIN"]
    assert capabilities(["ALL"], ["ALL"], False, WITHOUT_SYS_RESOURCE) == []
    # Privileged ignores drops, as containerd does.
    assert capabilities([], ["ALL"], True, WITHOUT_SYS_RESOURCE) == WITHOUT_SYS_RESOURCE
    # None: a node holding everything.
    assert capabilities([], [], True) == ALL_CAPABILITIES


def test_defaults_and_single_adds_against_the_held_set() -> None:
    assert capabilities([], [], False, WITHOUT_SYS_RESOURCE) == DEFAULT_CAPABILITIES
    # A default the runtime does not hold is left out rather than making runc fail.
    held = [c for c in ALL_CAPABILITIES if c != "CAP_AUDIT_WRITE"]
    assert capabilities([], [], False, held) == [c for c in DEFAULT_CAPABILITIES if c != "CAP_AUDIT_WRITE"]
    assert capabilities(["net_admin"], ["KILL"], False, WITHOUT_SYS_RESOURCE) == \
        [c for c in DEFAULT_CAPABILITIES if c != "CAP_KILL"] + ["CAP_NET_ADMIN"]
    # Asking for one by name that the node cannot grant is an error that names it.
    with pytest.raises(FailedPrecondition, match="CAP_SYS_RESOURCE"):
        capabilities(["SYS_RESOURCE"], [], False, WITHOUT_SYS_RESOURCE)
    with pytest.raises(FailedPrecondition, match="CAP_SYS_RESOURCE"):
        capabilities(["ALL", "CAP_SYS_RESOURCE"], [], False, WITHOUT_SYS_RESOURCE)
    with pytest.raises(InvalidArgument, match="'FLY'"):
        capabilities(["FLY"], [], False, WITHOUT_SYS_RESOURCE)
    with pytest.raises(InvalidArgument):
        capabilities([], ["CAP_\x00"], False, WITHOUT_SYS_RESOURCE)


@given(held=st.sets(st.sampled_from(ALL_CAPABILITIES)),
       add=st.lists(st.sampled_from([*ALL_CAPABILITIES, "ALL"]), max_size=4),
       drop=st.lists(st.sampled_from([*ALL_CAPABILITIES, "ALL"]), max_size=4),
       privileged=st.booleans())
def test_never_more_than_held(held: set[str], add: list[str], drop: list[str], privileged: bool) -> None:
    try:
        caps = capabilities(add, drop, privileged, sorted(held))
    except FailedPrecondition:
        assert not privileged and any(c != "ALL" and c not in held for c in add)
        return
    assert set(caps) <= held
    assert len(caps) == len(set(caps))
    if privileged:
        assert caps == [c for c in ALL_CAPABILITIES if c in held]
    elif "ALL" in drop:
        assert set(caps) == {c for c in add if c != "ALL"} - set(drop)
    else:
        assert not set(caps) & set(drop)
