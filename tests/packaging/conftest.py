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
