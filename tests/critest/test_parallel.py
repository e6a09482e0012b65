"""`critest --parallel 8` (as CRI-O's CI runs it): the sandbox, network and idempotence specs at once,
eight at a time, against one server."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from crishim.api.runtime.v1 import api_pb2
from tests.container.criutil import Cri, cri
from tests.critest import test_networking as net
from tests.critest import test_pod as pod
from tests.harness import TestNode

pytestmark = pytest.mark.root
__all__ = ["cri"]

Spec = Callable[[Cri, TestNode], None]
SPECS: list[Spec] = [
    lambda c, n: pod.test_runtime_should_support_running_pod_sandbox(c.server),
    lambda c, n: pod.test_runtime_should_support_stopping_pod_sandbox(c.server),
    lambda c, n: pod.test_runtime_should_support_removing_pod_sandbox(c.server),
    lambda c, n: pod.test_runtime_should_support_preserving_pod_sandbox_attributes(c.server),
    lambda c, n: pod.test_runtime_should_support_listing_pod_sandbox_metrics(c),
    lambda c, n: pod.test_stop_pod_sandbox_should_not_return_an_error_if_not_found(c.server),
    lambda c, n: pod.test_stop_pod_sandbox_should_not_return_an_error_if_already_stopped(c.server),
    lambda c, n: pod.test_remove_pod_sandbox_should_not_return_an_error_if_not_found(c.server),
    lambda c, n: pod.test_stop_container_should_not_return_an_error_if_not_found(c.server),
    lambda c, n: pod.test_stop_container_should_not_return_an_error_if_already_stopped(c),
    lambda c, n: pod.test_remove_container_should_not_return_an_error_if_not_found(c.server),
    lambda c, n: pod.test_remove_image_should_not_return_an_error_if_not_found(c.server),
    lambda c, n: net.test_runtime_should_support_dns_config(c),
    lambda c, n: net.test_runtime_should_support_set_hostname(c),
]
SPECS += [lambda c, n, case=case: pod.test_should_support_sysctls(c, *case.values)
          for case in pod.SYSCTL_CASES]
SPECS += [lambda c, n, case=case: net.test_runtime_should_support_port_mapping(c, n, *case.values)
          for case in net.PORT_MAPPING_CASES]


def test_specs_pass_eight_at_a_time(cri: Cri, node: TestNode) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(spec, cri, node) for spec in SPECS]
    for future in futures:
        future.result()
    assert cri.server.runtime().ListPodSandbox(api_pb2.ListPodSandboxRequest()).items == []
