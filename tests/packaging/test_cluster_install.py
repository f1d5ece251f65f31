"""The chart against a real API server: Helm (helm-python-sdk) installs and upgrades it, every
rendered object passes a server-side dry run, and the API server's own RBAC authorizer
answers what the controller and people may do.

Needs DEPLOYCTL_TEST_KUBECONFIG: a kubeconfig with cluster-admin rights on a throwaway
cluster. `tests/packaging/with-sandbox.sh` starts one (deployctl-sandbox, Kubernetes 1.37)
and runs the whole suite against it. Without it these tests FAIL: a packaging change that
was never tried on an API server is not tested."""

from __future__ import annotations

import copy

import helm_python
import pytest
import yaml

from kube import ApiError, Kube, wait_for
from support import CHART_DIR, REPO, chart_for, of_kind

# An image no node has, so the installed controller never starts.
NEVER_RUNS = {"image": {"repository": "deployctl.dev/packaging-test-never-runs"}}

# prometheus-operator's kinds: their CRDs are not part of the test cluster.
NOT_IN_TEST_CLUSTER = {"ServiceMonitor", "PrometheusRule"}


@pytest.fixture(scope="module")
def namespace(kube, run_id):
    """A throwaway namespace for dry runs and bindings."""
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"pkg-dry-{run_id}"}}
    kube.apply(ns)
    yield ns["metadata"]["name"]
    kube.delete(ns)


@pytest.fixture(scope="module")
def release(kubeconfig, kube, run_id):
    """The chart installed by Helm with its default values, as `helm install` would, except
    for an image that does not exist: on a cluster with (simulated) nodes, a controller
    watching all namespaces would act on other tests' stacks. test_cluster_run.py runs the
    real controller, confined to its own namespace."""
    name, ns = f"deployctl-pkg-{run_id}", f"pkg-{run_id}"
    cfg = helm_python.Config(namespace=ns, kubeconfig_path=kubeconfig)
    installed = cfg.install(chart_for(kube), name, NEVER_RUNS,
                            namespace=ns, create_namespace=True, timeout=120)
    yield {"name": name, "namespace": ns, "config": cfg, "installed": installed}
    try:
        cfg.uninstall(name, timeout=120)
    finally:
        kube.delete({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})


# --- Helm install and upgrade -----------------------------------------------------------

def test_helm_installs_the_chart_and_its_crds(kube, release):
    ns, name = release["namespace"], release["name"]
    assert release["installed"]["status"] == "deployed", release["installed"]
    for crd in ("productionstacks.deployctl.dev", "stackoperations.deployctl.dev",
                "stacksnapshots.deployctl.dev"):
        obj = kube.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}")
        established = {c["type"]: c["status"] for c in obj["status"]["conditions"]}
        assert established.get("Established") == "True", obj["status"]
    deploy = kube.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{name}")
    assert deploy["spec"]["replicas"] == 2
    for role in ("viewer", "operator", "admin", "controller"):
        assert kube.exists(f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}-{role}")
    pdb_version = "policy/v1"
    manifest = release["installed"]["manifest"]
    assert f"apiVersion: {pdb_version}\nkind: PodDisruptionBudget" in manifest
    assert kube.exists(f"/apis/{pdb_version}/namespaces/{ns}/poddisruptionbudgets/{name}")


def test_helm_upgrades_and_keeps_history(kube, release):
    cfg, name, ns = release["config"], release["name"], release["namespace"]
    upgraded = cfg.upgrade(chart_for(kube), name,
                           {**NEVER_RUNS, "replicaCount": 1, "leaderElection": {"leaseDuration": "20s"}},
                           namespace=ns, timeout=120)
    assert upgraded["revision"] == 2 and upgraded["status"] == "deployed"
    deploy = kube.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{name}")
    assert deploy["spec"]["replicas"] == 1
    assert "--lease-duration=20s" in deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    # One replica: the PodDisruptionBudget would block every drain, so it is gone.
    pdb_version = "policy/v1"
    assert not kube.exists(f"/apis/{pdb_version}/namespaces/{ns}/poddisruptionbudgets/{name}")
    assert [r["revision"] for r in cfg.history(name)] == [1, 2]


# --- the admission policy -----------------------------------------------------------------

def test_requested_by_must_be_the_callers_own_name(kube, release, run_id):
    """The chart's ValidatingAdmissionPolicy, with two users the operator role is bound to:
    each may record themselves as who asked, or nobody; never the other."""
    name = release["name"]
    ns = f"pkg-vap-{run_id}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    try:
        for user in ("alice", "bob"):
            kube.apply({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": f"{user}-operator", "namespace": ns},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": f"{name}-operator"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                              "name": user}],
            })
        path = f"/apis/deployctl.dev/v1alpha1/namespaces/{ns}/stackoperations"

        def op(op_name: str, requested_by: str | None) -> dict:
            spec = {"stack": "shop", "action": "Pause", "reason": "test"}
            if requested_by is not None:
                spec["requestedBy"] = requested_by
            return {"apiVersion": "deployctl.dev/v1alpha1", "kind": "StackOperation",
                    "metadata": {"name": op_name}, "spec": spec}

        alice, bob = kube.as_user("alice"), kube.as_user("bob")
        # The policy's binding may take a moment to be served.
        wait_for("the admission policy to refuse a forged requestedBy", lambda: _refused(
            alice, path, op("forged", "bob")), timeout=30)
        with pytest.raises(ApiError) as refused:
            alice.request("POST", path, op("forged", "bob"))
        assert refused.value.status in (403, 422), refused.value
        assert "must be your own user name (alice)" in str(refused.value), refused.value
        assert alice.request("POST", path, op("by-alice", "alice"))["spec"]["requestedBy"] == "alice"
        assert "requestedBy" not in bob.request("POST", path, op("unsigned", None))["spec"]
        with pytest.raises(ApiError):
            bob.request("POST", path, op("forged-2", "alice"))
    finally:
        kube.delete({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})


def test_the_controller_may_change_only_a_stacks_finalizers(kube, release, run_id):
    """The chart's second policy, acting as the controller's ServiceAccount: adding a
    finalizer passes, a spec or label change is refused, and a person may still change
    the spec."""
    name, release_ns = release["name"], release["namespace"]
    ns = f"pkg-fin-{run_id}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    try:
        stack = yaml.safe_load((REPO / "examples/demo-stack/stack.yaml").read_text())
        stack["metadata"] = {"name": "shop", "namespace": ns}
        kube.apply(stack)
        path = f"/apis/deployctl.dev/v1alpha1/namespaces/{ns}/productionstacks/shop"
        controller = kube.as_user(f"system:serviceaccount:{release_ns}:{name}")

        def patch(client, body):
            return client.request("PATCH", path, body, content_type="application/merge-patch+json")

        # (A change the schema accepts: validation runs before admission policies.)
        wait_for("the policy to refuse the controller a spec change", lambda: _patch_refused(
            controller, path, {"spec": {"rollout": {"progressDeadline": "7m"}}}), timeout=30)
        done = patch(controller, {"metadata": {"finalizers": ["deployctl.dev/cleanup"]}})
        assert done["metadata"]["finalizers"] == ["deployctl.dev/cleanup"]
        for change in ({"spec": {"rollout": {"progressDeadline": "1m"}}},
                       {"metadata": {"labels": {"team": "x"}}}):
            with pytest.raises(ApiError) as refused:
                patch(controller, change)
            assert "may change only metadata.finalizers" in str(refused.value), refused.value
        patch(controller, {"metadata": {"finalizers": None}})
        # A person is not held by it.
        assert patch(kube, {"metadata": {"labels": {"team": "x"}}})["metadata"]["labels"]["team"] == "x"
    finally:
        kube.delete({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})


def _patch_refused(client, path: str, body: dict) -> bool:
    """Whether a dry-run merge patch is refused by the policy."""
    try:
        client.request("PATCH", path, body, content_type="application/merge-patch+json",
                       params={"dryRun": "All"})
    except ApiError as e:
        return "finalizers" in str(e)
    return False


def _refused(client, path: str, obj: dict) -> bool:
    """Whether a dry-run create of `obj` is refused by the policy."""
    try:
        client.request("POST", path, obj, params={"dryRun": "All"})
    except ApiError as e:
        return "requestedBy" in str(e)
    return False


# --- what the API server's authorizer says ----------------------------------------------

def sa(release) -> str:
    return f"system:serviceaccount:{release['namespace']}:{release['name']}"


@pytest.mark.parametrize("verb,group,resource,where,allowed", [
    ("list", "deployctl.dev", "productionstacks", None, True),
    ("watch", "deployctl.dev", "stackoperations", "anywhere", True),
    ("patch", "deployctl.dev", "productionstacks/status", "anywhere", True),
    ("update", "deployctl.dev", "productionstacks/finalizers", "anywhere", True),
    ("create", "deployctl.dev", "stackoperations", "anywhere", False),
    ("watch", "deployctl.dev", "stacksnapshots", None, True),
    ("create", "deployctl.dev", "stacksnapshots", "anywhere", True),
    ("delete", "deployctl.dev", "stacksnapshots", "anywhere", True),
    ("patch", "deployctl.dev", "stacksnapshots/status", "anywhere", True),
    ("deletecollection", "deployctl.dev", "stacksnapshots", "anywhere", False),
    ("create", "apps", "deployments", "anywhere", True),
    ("delete", "apps", "controllerrevisions", "anywhere", True),
    ("create", "batch", "jobs", "anywhere", True),
    ("watch", "batch", "jobs", None, True),
    ("patch", "batch", "jobs", "anywhere", True),
    ("update", "batch", "jobs", "anywhere", False),
    ("list", "", "endpoints", None, True),
    ("delete", "", "pods", "anywhere", False),
    ("create", "events.k8s.io", "events", "anywhere", True),
    # Referenced ConfigMaps and Secrets are read and copied per revision; the user's
    # objects are never changed (snapshot Jobs mount the stacks' Secrets by reference).
    ("get", "", "secrets", "anywhere", True),
    ("watch", "", "secrets", None, True),
    ("create", "", "secrets", "anywhere", True),
    ("update", "", "secrets", "anywhere", False),
    ("delete", "", "secrets", "anywhere", False),
    ("get", "", "configmaps", "anywhere", True),
    ("delete", "", "configmaps", "anywhere", False),
    ("create", "", "namespaces", None, False),
])
def test_the_controller_may_do_what_it_needs_and_no_more(kube, release, verb, group, resource,
                                                         where, allowed):
    ns = {None: None, "anywhere": "some-team", "own": release["namespace"]}[where]
    assert kube.can(sa(release), verb, group, resource, namespace=ns,
                    groups=["system:serviceaccounts"]) is allowed


def test_the_controller_may_touch_only_its_own_lease(kube, release):
    me, ns = sa(release), release["namespace"]
    lease = f"{release['name']}-controller"
    g = ["system:serviceaccounts"]
    assert kube.can(me, "create", "coordination.k8s.io", "leases", namespace=ns, groups=g)
    assert kube.can(me, "update", "coordination.k8s.io", "leases", namespace=ns, name=lease, groups=g)
    assert not kube.can(me, "update", "coordination.k8s.io", "leases", namespace=ns,
                        name="kube-scheduler", groups=g)
    assert not kube.can(me, "update", "coordination.k8s.io", "leases", namespace="kube-system",
                        name=lease, groups=g)


def bind(kube, namespace: str, name: str, cluster_role: str, user: str):
    kube.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": name, "namespace": namespace},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": cluster_role},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]})


def test_an_operator_requests_rollbacks_but_cannot_edit_stacks(kube, release, namespace):
    bind(kube, namespace, "oncall", f"{release['name']}-operator", "oncall@example.com")
    def can(verb, resource, ns=namespace):
        return kube.can("oncall@example.com", verb, "deployctl.dev", resource, namespace=ns)
    # The authorizer reads RoleBindings from a cache: wait until it has this one.
    wait_for("the oncall RoleBinding to take effect", lambda: can("create", "stackoperations"))
    assert can("create", "stackoperations")  # Rollback, Restore, ...
    assert can("create", "stacksnapshots")   # a snapshot now
    assert can("get", "productionstacks") and can("watch", "productionstacks")
    assert can("list", "stacksnapshots")
    for verb in ("update", "patch", "delete", "create"):
        assert not can(verb, "productionstacks"), verb
    for verb in ("update", "patch", "delete"):
        assert not can(verb, "stackoperations"), verb
        assert not can(verb, "stacksnapshots"), verb
        assert not can(verb, "stacksnapshots/status"), verb
    assert not kube.can("oncall@example.com", "get", "", "secrets", namespace=namespace)
    assert not can("create", "stackoperations", ns="another-team"), "bound in one namespace only"


def test_viewer_and_admin_aggregate_into_the_built_in_roles(kube, release, namespace):
    bind(kube, namespace, "reader", "view", "reader@example.com")
    bind(kube, namespace, "developer", "edit", "developer@example.com")
    # kube-controller-manager's clusterrole-aggregation controller fills the built-in
    # roles from the labels; give it a moment.
    wait_for("view to include productionstacks", lambda: kube.can(
        "reader@example.com", "list", "deployctl.dev", "productionstacks", namespace=namespace))
    wait_for("edit to include editing productionstacks", lambda: kube.can(
        "developer@example.com", "update", "deployctl.dev", "productionstacks", namespace=namespace))
    assert not kube.can("reader@example.com", "create", "deployctl.dev", "stackoperations",
                        namespace=namespace)
    # Snapshots aggregate the same way: view reads them, edit (admin's rules) deletes them.
    wait_for("view to include stacksnapshots", lambda: kube.can(
        "reader@example.com", "watch", "deployctl.dev", "stacksnapshots", namespace=namespace))
    assert not kube.can("reader@example.com", "create", "deployctl.dev", "stacksnapshots",
                        namespace=namespace)
    wait_for("edit to include deleting stacksnapshots", lambda: kube.can(
        "developer@example.com", "delete", "deployctl.dev", "stacksnapshots", namespace=namespace))


def test_an_admin_manages_snapshots_but_not_their_status(kube, release, namespace):
    bind(kube, namespace, "owners", f"{release['name']}-admin", "owner@example.com")
    def can(verb, resource):
        return kube.can("owner@example.com", verb, "deployctl.dev", resource, namespace=namespace)
    wait_for("the owners RoleBinding to take effect", lambda: can("get", "stacksnapshots"))
    for verb in ("get", "list", "watch", "create", "update", "patch", "delete"):
        assert can(verb, "stacksnapshots"), verb
    for verb in ("update", "patch"):
        assert not can(verb, "stacksnapshots/status"), verb
        assert not can(verb, "productionstacks/status"), verb


# --- server-side dry run of everything we ship ------------------------------------------

VARIANTS = {
    "default": {},
    "watchNamespace": {"watchNamespace": "shop"},
    "pinned image, no NetworkPolicy": {"image": {"digest": "sha256:" + "a" * 64},
                                       "networkPolicy": {"enabled": False}},
    "one replica, narrowed NetworkPolicy": {
        "replicaCount": 1,
        "networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
                          "apiServer": {"cidrs": ["10.0.0.1/32"], "ports": [6443]},
                          "gateTargets": {"ports": [{"port": 8080, "protocol": "TCP"}]},
                          "extraEgress": [{"to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}]}]}},
}


def dry_run_all(kube: Kube, docs: list[dict], namespace: str) -> list[str]:
    failures = []
    for doc in docs:
        if doc["kind"] in NOT_IN_TEST_CLUSTER:
            continue
        try:
            kube.apply(doc, namespace=namespace, dry_run=True)
        except (ApiError, LookupError) as e:
            failures.append(f"{doc['kind']} {doc['metadata'].get('name')}: {e}")
    return failures


@pytest.mark.parametrize("values", VARIANTS.values(), ids=VARIANTS.keys())
def test_every_rendered_object_passes_a_server_side_dry_run(kubeconfig, kube, namespace, values):
    values = copy.deepcopy(values)
    if values.get("watchNamespace"):
        values["watchNamespace"] = namespace
    # Rendered by Helm's own server dry run, so with the API versions this server serves;
    # then every object goes to the API server as a dry-run apply (admission, schema).
    cfg = helm_python.Config(namespace=namespace, kubeconfig_path=kubeconfig)
    release = cfg.install(chart_for(kube), "deployctl-dry", values,
                          namespace=namespace, dry_run="server")
    docs = [d for d in yaml.safe_load_all(release["manifest"]) if d]
    assert of_kind(docs, "Deployment")
    assert dry_run_all(kube, docs, namespace) == []


def test_the_plain_install_manifests_pass_a_server_side_dry_run(kube, namespace):
    docs = [d for d in yaml.safe_load_all((REPO / "manifests/install/deployctl.yaml").read_text()) if d]
    # Put them into the throwaway namespace: a dry run does not create deployctl-system.
    moved = []
    for d in docs:
        if d["kind"] == "Namespace":
            continue
        d = copy.deepcopy(d)
        if "namespace" in d["metadata"]:
            d["metadata"]["namespace"] = namespace
        for s in d.get("subjects", []):
            s["namespace"] = namespace
        moved.append(d)
    assert dry_run_all(kube, moved, namespace) == []


def test_the_gitops_example_stack_is_valid(kube, namespace):
    stack = yaml.safe_load((REPO / "deploy/gitops/stack/productionstack.yaml").read_text())
    assert dry_run_all(kube, [stack], namespace) == []
