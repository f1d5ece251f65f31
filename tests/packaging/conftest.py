"""Fixtures of the cluster tests (test_cluster_*.py): the kubeconfig of a throwaway cluster
from DEPLOYCTL_TEST_KUBECONFIG, and an API client for it."""

from __future__ import annotations

import os
import secrets

import pytest

from kube import Kube


@pytest.fixture(scope="module")
def kubeconfig() -> str:
    path = os.environ.get("DEPLOYCTL_TEST_KUBECONFIG")
    if not path:
        pytest.fail(
            "DEPLOYCTL_TEST_KUBECONFIG is not set. These tests need a throwaway cluster:\n"
            "  tests/packaging/with-sandbox.sh -q         # builds, starts deployctl-sandbox, runs pytest\n"
            "or by hand:\n"
            "  cargo build --workspace --bins\n"
            "  ./target/debug/deployctl-sandbox --nodes 1 --kubeconfig-out /tmp/pkg-kubeconfig &\n"
            "  DEPLOYCTL_TEST_KUBECONFIG=/tmp/pkg-kubeconfig python3 -m pytest tests/packaging -q\n"
            "(kill the sandbox afterwards: it removes the cluster on SIGTERM)")
    assert os.path.isfile(path), f"DEPLOYCTL_TEST_KUBECONFIG={path} does not exist"
    return path


@pytest.fixture(scope="module")
def kube(kubeconfig) -> Kube:
    k = Kube(kubeconfig)
    k.get("/version")
    return k


@pytest.fixture(scope="module")
def run_id() -> str:
    return secrets.token_hex(3)


@pytest.fixture(scope="session")
def images() -> dict:
    """The images the cluster tests run, built by scripts/build-image.sh and served by the
    sandbox's registry on loopback (tests/packaging/with-sandbox.sh builds and pushes them):
    `controller` (`repository`, `tag`, `digest`: chart values) and `demo` (the demo app's
    repository; tags v1 and v2 are pushed, with their `digests`)."""
    controller = os.environ.get("DEPLOYCTL_TEST_IMAGE")
    demo = os.environ.get("DEPLOYCTL_TEST_DEMO_IMAGE")
    if not controller or not demo:
        pytest.fail(
            "DEPLOYCTL_TEST_IMAGE and DEPLOYCTL_TEST_DEMO_IMAGE are not set: the cluster tests run\n"
            "the real images from a registry. tests/packaging/with-sandbox.sh builds them with\n"
            "scripts/build-image.sh, starts deployctl-sandbox --registry and pushes them.")
    name, digest = controller.split("@", 1)
    repository, tag = name.rsplit(":", 1)
    demo_repository, demo_digests = demo.split("@", 1)
    digests = dict(pair.split("=", 1) for pair in demo_digests.split(","))
    return {"controller": {"repository": repository, "tag": tag, "digest": digest},
            "demo": {"repository": demo_repository, "digests": digests}}
