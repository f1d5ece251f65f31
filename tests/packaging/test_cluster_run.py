"""The chart running the real controller: Helm installs it (watching one namespace only), the
two replicas elect a leader through the chart's Lease and RBAC, the example GitOps stack
rolls out to Healthy, the metrics answer, and killing the leader hands over.

Needs DEPLOYCTL_TEST_KUBECONFIG (see conftest.py) and a cluster whose node runs the image
deployctl.dev/deployctl: the simulated node of deployctl-sandbox with the workspace built
(`cargo build --workspace --bins`; `tests/packaging/with-sandbox.sh` does both). On a
cluster without a Ready node these tests are skipped, as the platform contract says for
tests that need the simulated node."""

from __future__ import annotations

import copy
import urllib.request

import helm_python
import pytest
import yaml

from kube import ApiError, Kube, wait_for
from support import CHART_DIR, REPO

STACK_API = "/apis/deployctl.dev/v1alpha1"


@pytest.fixture(scope="module")
def node(kube: Kube):
    nodes = kube.get("/api/v1/nodes")["items"]
    ready = [n for n in nodes if any(c["type"] == "Ready" and c["status"] == "True"
                                     for c in n.get("status", {}).get("conditions", []))]
    if not ready:
        pytest.skip("the cluster has no Ready node to run the controller on "
                    "(deployctl-sandbox --nodes 1 has one)")
    return ready[0]["metadata"]["name"]


@pytest.fixture(scope="module")
def running(kubeconfig, kube, node, run_id):
    """The chart installed with its defaults, except that it watches only `stacks_ns`."""
    name, ns, stacks_ns = f"deployctl-run-{run_id}", f"pkg-run-{run_id}", f"pkg-run-{run_id}-stacks"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": stacks_ns}})
    cfg = helm_python.Config(namespace=ns, kubeconfig_path=kubeconfig)
    cfg.install(helm_python.Chart.load(str(CHART_DIR)), name,
                {"watchNamespace": stacks_ns, "leaderElection": {"leaseDuration": "6s"}},
                namespace=ns, create_namespace=True, timeout=120)
    ctx = {"name": name, "namespace": ns, "stacks": stacks_ns, "lease": f"{name}-controller"}
    try:
        yield ctx
    finally:
        # The stack first, while its controller still runs its finalizer.
        try:
            kube.request("DELETE", f"{STACK_API}/namespaces/{stacks_ns}/productionstacks/shop")
            wait_for("the stack to be cleaned up and deleted", lambda: not kube.exists(
                f"{STACK_API}/namespaces/{stacks_ns}/productionstacks/shop"), timeout=60)
        except ApiError as e:
            if e.status != 404:
                raise
        finally:
            cfg.uninstall(name, timeout=120)
            for n in (stacks_ns, ns):
                kube.delete({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}})


def pods(kube, ctx):
    sel = "app.kubernetes.io/component=controller,app.kubernetes.io/instance=" + ctx["name"]
    return kube.request("GET", f"/api/v1/namespaces/{ctx['namespace']}/pods",
                        params={"labelSelector": sel})["items"]


def ready_pods(kube, ctx):
    return [p for p in pods(kube, ctx)
            if p.get("metadata", {}).get("deletionTimestamp") is None
            and any(c["type"] == "Ready" and c["status"] == "True"
                    for c in p.get("status", {}).get("conditions", []))]


def holder(kube, ctx):
    path = f"/apis/coordination.k8s.io/v1/namespaces/{ctx['namespace']}/leases/{ctx['lease']}"
    if not kube.exists(path):
        return None
    return kube.get(path)["spec"].get("holderIdentity")


def metrics(pod) -> str:
    with urllib.request.urlopen(f"http://{pod['status']['podIP']}:8080/metrics", timeout=5) as r:
        return r.read().decode()


def test_both_replicas_get_ready_and_one_leads(kube, running):
    wait_for("2 ready controller pods", lambda: len(ready_pods(kube, running)) == 2, timeout=90)
    lead = wait_for("a Lease holder", lambda: holder(kube, running), timeout=30)
    assert lead in {p["metadata"]["name"] for p in pods(kube, running)}, (
        f"the Lease holder {lead!r} is not a controller pod: POD_NAME is not passed through")


def test_the_example_stack_rolls_out_to_healthy(kube, running):
    stack = yaml.safe_load((REPO / "deploy/gitops/stack/productionstack.yaml").read_text())
    stack = copy.deepcopy(stack)
    stack["metadata"]["namespace"] = running["stacks"]
    stack["spec"]["rollout"]["analysis"] = "5s"  # the example's 2m, shortened for the test
    # The simulated node has no cluster DNS, so the api tier cannot find `shop-db`: keep the
    # db (StatefulSet, claim, Service) and give it an http gate, which the controller
    # measures from its pod to the db pod's IP, as it would in a real cluster.
    db = next(c for c in stack["spec"]["components"] if c["name"] == "db")
    db["gates"].append({"name": "http-ready", "http": {"target": {"path": "/readyz", "port": "http"}}})
    stack["spec"]["components"] = [db]
    kube.apply(stack)

    def phase():
        s = kube.get(f"{STACK_API}/namespaces/{running['stacks']}/productionstacks/shop")
        status = s.get("status", {})
        return status.get("phase") == "Healthy" and status

    try:
        status = wait_for("the example stack to be Healthy", phase, timeout=240)
    except AssertionError:
        s = kube.get(f"{STACK_API}/namespaces/{running['stacks']}/productionstacks/shop")
        raise AssertionError(f"stack status: {s.get('status', {}).get('message')}\n"
                             f"{yaml.safe_dump(s.get('status', {}))[:4000]}") from None
    assert status["readyComponents"] == "1/1"
    # Healthy means both gates passed, so the controller pod reached the db pod's IP (http
    # gate). They are measured again after promotion; none may have failed or errored.
    for gate in status["components"][0].get("gates", []):
        assert gate.get("failures", 0) == 0 and gate.get("errors", 0) == 0, gate
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}


def test_the_leader_serves_metrics(kube, running):
    lead = holder(kube, running)
    by_name = {p["metadata"]["name"]: p for p in ready_pods(kube, running)}
    text = metrics(by_name[lead])
    assert "deployctl_leader 1" in text
    assert 'deployctl_reconcile_total{result="ok"}' in text
    standby = next(p for n, p in by_name.items() if n != lead)
    assert "deployctl_leader 0" in metrics(standby)


def test_killing_the_leader_hands_over(kube, running):
    lead = holder(kube, running)
    kube.request("DELETE", f"/api/v1/namespaces/{running['namespace']}/pods/{lead}")
    new = wait_for("another replica to take the Lease",
                   lambda: (h := holder(kube, running)) not in (None, lead) and h, timeout=45)
    assert new != lead
