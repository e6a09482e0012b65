"""Container lifecycle on real runc/crun and conmon."""

from __future__ import annotations

import pytest

from crishim.container.model import ContainerState
from tests.container.conftest import IMAGE, Env, Pod, spec, wait_until

pytestmark = pytest.mark.root


async def exited(env: Env, cid: str) -> bool:
    mgr = env.managers[-1]
    return (await mgr.status(cid)).state == ContainerState.EXITED


async def test_exit_code_zero_and_logs(env: Env, pod: Pod) -> None:
    mgr = env.manager()
    await mgr.recover()
    c = await mgr.create(pod.sandbox, spec("hello", "echo out; echo err >&2; printf partial"), IMAGE)
    assert c.state == ContainerState.CREATED
    await mgr.start(c.id)
    await wait_until(lambda: exited(env, c.id), what="exit")
    st = await mgr.status(c.id)
    assert (st.exit_code, st.reason) == (0, "Completed")
    print(open(st.log_path).read())
