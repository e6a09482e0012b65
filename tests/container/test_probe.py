import os, pytest
from crishim.container.model import ContainerState
from tests.container.conftest import IMAGE, Env, make_pod, spec, wait_until
pytestmark = pytest.mark.root

@pytest.mark.parametrize("handler", ["runc", "crun"])
async def test_probe(env: Env, tmp_path, handler) -> None:
    with make_pod(tmp_path, handler) as pod:
        mgr = env.manager()
        await mgr.recover()
        c = await mgr.create(pod.sandbox, spec("hello", "trap '' TERM; while :; do sleep 0.1; done"), IMAGE)
        await mgr.start(c.id)
        ino = os.stat(c.dir + "/ctl").st_ino
        r = await mgr.exec_sync(c.id, ["sh", "-c", "echo hi; ip addr; id; hostname; echo e >&2; exit 4"], 5)
        print(r)
        assert os.stat(c.dir + "/ctl").st_ino == ino
        print(os.listdir(c.dir), os.listdir(env.run_dir / "exec"), os.listdir(env.run_dir / "sock"))
        await mgr.stop(c.id, 0.5)
        st = await mgr.status(c.id)
        print(st)
        await mgr.remove(c.id)
        print(os.listdir(env.run_dir / "sock"), os.listdir(env.run_dir / "exits"), os.listdir(env.state))
