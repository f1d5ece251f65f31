"""The Helm chart: lint, values schema, hardening, least-privilege RBAC, and that every value
in values.yaml does what it says."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import tomllib

import helm_python
import pytest
import yaml

from support import (CHART_DIR, NAMESPACE, REPO, allows, container, deployment, grants,
                     lint, names, nested, notes, of_kind, one, render, roles, set_path)

VARIANTS = {
    "default": {},
    "watchNamespace": {"watchNamespace": "shop"},
    "networkPolicy off": {"networkPolicy": {"enabled": False}},
    "monitoring on": {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}},
                      "prometheusRule": {"enabled": True, "labels": {"release": "kps"}}},
    "one replica": {"replicaCount": 1},
    "one replica, no leader election": {"replicaCount": 1,
                                        "leaderElection": {"enabled": False}},
    "pinned image": {"image": {"repository": "registry.example/deployctl", "tag": "v9",
                               "digest": "sha256:" + "a" * 64}},
    "no RBAC, existing ServiceAccount": {"rbac": {"create": False},
                                         "serviceAccount": {"create": False, "name": "ctl"},
                                         "userRoles": {"create": False}},
    "no Secret versioning": {"versionSecrets": False},
}


# --- lint and schema ----------------------------------------------------------------

@pytest.mark.parametrize("values", VARIANTS.values(), ids=VARIANTS.keys())
def test_helm_lint_is_clean(values):
    report = lint(values)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], json.dumps(report, indent=1)


@pytest.mark.parametrize("values,needle", [
    ({"replicaCount": "2"}, "/replicaCount"),
    ({"replicas": 2}, "additional properties 'replicas'"),
    ({"logging": {"format": "xml"}}, "/logging/format"),
    ({"leaderElection": {"leaseDuration": "15 seconds"}}, "/leaderElection/leaseDuration"),
    ({"networkPolicy": {"apiServer": {"cidrs": ["10.0.0.1"]}}}, "/networkPolicy/apiServer/cidrs"),
    ({"prometheusRule": {"runbookBaseURL": "https://x/runbooks"}}, "/prometheusRule/runbookBaseURL"),
    ({"image": {"digest": "latest"}}, "/image/digest"),
    ({"watchNamespace": "Shop"}, "/watchNamespace"),
    # Gone: the controller reads no Secret; each stack names its own key Secret.
    ({"snapshots": {"encryptionKeySecret": "k"}}, "additional properties 'snapshots'"),
])
def test_schema_refuses_bad_values(values, needle):
    with pytest.raises(helm_python.HelmError) as e:
        render(values)
    assert needle in str(e.value), str(e.value)


@pytest.mark.parametrize("values,needle", [
    ({"replicaCount": 2, "leaderElection": {"enabled": False}}, "needs leaderElection.enabled=true"),
    ({"replicaCount": 2, "podDisruptionBudget": {"minAvailable": 2}}, "minAvailable must be below"),
    ({"serviceAccount": {"create": False}}, "serviceAccount.name is required"),
])
def test_unsafe_combinations_are_refused(values, needle):
    with pytest.raises(helm_python.HelmError) as e:
        render(values)
    assert needle in str(e.value), str(e.value)


def test_chart_versions_follow_the_workspace():
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    cargo = tomllib.loads((REPO / "Cargo.toml").read_text())
    version = cargo["workspace"]["package"]["version"]
    assert chart["apiVersion"] == "v2"
    assert (chart["version"], chart["appVersion"]) == (version, version), (
        "bump charts/deployctl/Chart.yaml version and appVersion with the workspace version")


# --- generated copies ---------------------------------------------------------------

def test_chart_crds_are_the_generated_crds():
    generated = sorted(p.name for p in (REPO / "manifests/crds").glob("*.yaml"))
    in_chart = sorted(p.name for p in (CHART_DIR / "crds").glob("*.yaml"))
    assert in_chart == generated, "run scripts/sync-chart-crds.sh"
    for name in generated:
        assert (CHART_DIR / "crds" / name).read_bytes() == (REPO / "manifests/crds" / name).read_bytes(), (
            f"charts/deployctl/crds/{name} differs from manifests/crds/{name}; "
            "run scripts/sync-chart-crds.sh")
    check = subprocess.run(["bash", "scripts/sync-chart-crds.sh", "--check"], cwd=REPO,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_chart_alerts_are_the_plain_rules_file():
    assert (CHART_DIR / "files/alerts.yaml").read_bytes() == \
        (REPO / "deploy/prometheus/alerts.yaml").read_bytes(), "run scripts/sync-chart-alerts.sh"


# --- the controller Deployment --------------------------------------------------------

def test_pods_are_hardened_by_default():
    pod = deployment(render())["spec"]["template"]["spec"]
    c = container(render())
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"}}
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "privileged" not in sc
    for kind in ("requests", "limits"):
        assert set(c["resources"][kind]) == {"cpu", "memory"}, c["resources"]
    assert pod.get("hostNetwork") is None and pod.get("hostPID") is None
    assert pod["automountServiceAccountToken"] is True


def test_controller_runs_with_leader_election_and_probes():
    docs = render()
    d = deployment(docs)
    c = container(docs)
    assert d["spec"]["replicas"] == 2
    assert c["image"] == "deployctl.dev/deployctl:0.1.0"
    assert "command" not in c, "the image's entrypoint is deployctl-controller"
    assert c["args"] == [
        "--leader-elect=true",
        "--lease-name=deployctl-controller",
        f"--lease-namespace={NAMESPACE}",
        "--lease-duration=15s",
        "--metrics-addr=0.0.0.0:8080",
        "--log-format=json",
        "--resync=5m",
        "--version-secrets=true",
    ]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["DEPLOYCTL_AGENT_IMAGE"] == {"name": "DEPLOYCTL_AGENT_IMAGE",
                                            "value": "deployctl.dev/deployctl:0.1.0"}
    assert set(env) == {"POD_NAME", "POD_NAMESPACE", "DEPLOYCTL_AGENT_IMAGE", "DEPLOYCTL_AGENT_RESOURCES"}
    assert json.loads(env["DEPLOYCTL_AGENT_RESOURCES"]["value"]) == {
        "requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}}
    assert c["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    strategy = d["spec"]["strategy"]["rollingUpdate"]
    assert strategy == {"maxSurge": 1, "maxUnavailable": 0}


@pytest.mark.parametrize("values", VARIANTS.values(), ids=VARIANTS.keys())
def test_snapshot_agent_jobs_run_exactly_the_controller_image(values):
    """The agent (`deployctl-controller agent`) must be the same build as the controller
    that plans its work: same repository, tag and digest, whatever the values say."""
    c = container(render(values))
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["DEPLOYCTL_AGENT_IMAGE"] == c["image"]


def test_a_pinned_digest_pins_the_agent_too():
    c = container(render(VARIANTS["pinned image"]))
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["DEPLOYCTL_AGENT_IMAGE"] == "registry.example/deployctl:v9@sha256:" + "a" * 64


def controller_flags() -> set[str]:
    """Long flags of the controller, from controller/src/args.rs (clap derives
    `--field-name` from `field_name`)."""
    src = (REPO / "controller/src/args.rs").read_text()
    flags = set()
    for m in re.finditer(r"#\[arg\(([^\]]*)\)\]\s*(?:#\[[^\]]*\]\s*)*pub (\w+):", src, re.S):
        if "long" in m.group(1):
            flags.add("--" + m.group(2).replace("_", "-"))
    return flags


@pytest.mark.parametrize("values", VARIANTS.values(), ids=VARIANTS.keys())
def test_every_flag_the_chart_passes_exists_in_the_controller(values):
    flags = controller_flags()
    assert "--leader-elect" in flags, f"could not read controller/src/args.rs: {flags}"
    for arg in container(render(values))["args"]:
        flag = arg.split("=", 1)[0]
        assert flag in flags, f"the chart passes {flag}, which controller/src/args.rs does not define"


# --- RBAC -----------------------------------------------------------------------------

ALL_VARIANT_DOCS = pytest.mark.parametrize("values", VARIANTS.values(), ids=VARIANTS.keys())

# What the controller needs where it watches, and nothing more.
CONTROLLER_NEEDS = {
    ("deployctl.dev", "productionstacks"): {"get", "list", "watch", "patch", "update"},
    ("deployctl.dev", "productionstacks/status"): {"get", "patch", "update"},
    ("deployctl.dev", "productionstacks/finalizers"): {"update"},
    ("deployctl.dev", "stackoperations"): {"get", "list", "watch"},
    ("deployctl.dev", "stackoperations/status"): {"patch", "update"},
    ("deployctl.dev", "stacksnapshots"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("deployctl.dev", "stacksnapshots/status"): {"get", "patch", "update"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("apps", "statefulsets"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    # templateFrom: the referenced workload is scaled to 0 (replicas only).
    ("apps", "deployments/scale"): {"patch"},
    ("apps", "statefulsets/scale"): {"patch"},
    ("apps", "controllerrevisions"): {"get", "list", "watch", "create", "delete"},
    ("autoscaling", "horizontalpodautoscalers"): {"get", "list", "watch"},
    ("", "services"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("", "persistentvolumeclaims"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "endpoints"): {"get", "list", "watch"},
    # Config versioned with the revision: read the referenced objects, create the
    # per-revision copies, add owners to a reused copy. Never update or delete.
    ("", "configmaps"): {"get", "list", "watch", "create", "patch"},
    # (With versionSecrets: false, get alone: the Secrets a stack names for notifications
    # and Prometheus gates, never listed.)
    ("", "secrets"): {"get", "list", "watch", "create", "patch"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "patch", "delete"},
    ("events.k8s.io", "events"): {"create", "patch"},
    # list: the Job controller's FailedCreate Event says why an agent pod was refused.
    ("", "events"): {"create", "patch", "list"},
}


@ALL_VARIANT_DOCS
def test_no_wildcards_in_any_rbac_rule(values):
    for role in roles(render(values)):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                assert "*" not in rule.get(field, []), f"{role['kind']} {role['metadata']['name']}: {rule}"
            assert not any("*" in r for r in rule.get("resources", [])), rule


SECRET_VERBS = {"get", "list", "watch", "create", "patch"}


@ALL_VARIANT_DOCS
def test_only_the_controller_touches_secrets_and_only_to_version_them(values):
    """Snapshot Jobs mount the stacks' Secrets by reference. The controller's ClusterRole
    alone names Secrets: to copy the ones components reference (never update or delete),
    and with versionSecrets: false only to get the ones a stack names (notifications,
    Prometheus gates), never list them."""
    versioned = values.get("versionSecrets", True)
    for role in roles(render(values)):
        for g, res, verb, names_ in grants(role["rules"]):
            if not (g == "" and res.split("/")[0] == "secrets"):
                continue
            assert role["metadata"]["name"].endswith("deployctl-controller") \
                and (verb in SECRET_VERBS if versioned else verb == "get"), (
                f"{role['kind']} {role['metadata']['name']} grants {verb} on Secrets {names_}")


@ALL_VARIANT_DOCS
def test_the_controller_account_never_changes_a_secret(values):
    """Whatever is bound to the controller's ServiceAccount, by any binding the chart
    renders, grants no verb on Secrets but the copying ones (get alone with
    versionSecrets: false, so it learns no Secret it was not told of), in any namespace."""
    versioned = values.get("versionSecrets", True)
    docs = render(values)
    sa = deployment(docs)["spec"]["template"]["spec"]["serviceAccountName"]
    by_name = {(r["kind"], r["metadata"]["name"]): r for r in roles(docs)}
    bound = 0
    for b in of_kind(docs, "RoleBinding") + of_kind(docs, "ClusterRoleBinding"):
        if not any(s["kind"] == "ServiceAccount" and s["name"] == sa for s in b["subjects"]):
            continue
        role = by_name[(b["roleRef"]["kind"], b["roleRef"]["name"])]
        bound += 1
        for verb in ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"):
            if verb in SECRET_VERBS if versioned else verb == "get":
                continue
            assert not allows(role["rules"], "", "secrets", verb), (b["metadata"]["name"], verb)
            assert not allows(role["rules"], "", "secrets", verb, "any-secret")
    if values.get("rbac", {}).get("create", True):
        assert bound == 2, "the controller's role and its leader-election Role"


def test_controller_cluster_role_is_exactly_what_it_needs():
    docs = render()
    role = one(docs, "ClusterRole", "deployctl-controller")
    granted = {}
    for g, res, verb, names_ in grants(role["rules"]):
        assert names_ == (), role["rules"]
        granted.setdefault((g, res), set()).add(verb)
    assert granted == CONTROLLER_NEEDS
    off = one(render({"versionSecrets": False}), "ClusterRole", "deployctl-controller")
    granted_off = {}
    for g, res, verb, _ in grants(off["rules"]):
        granted_off.setdefault((g, res), set()).add(verb)
    assert granted_off == {**CONTROLLER_NEEDS, ("", "secrets"): {"get"}}
    # Prometheus gates allowed, Secrets not versioned: the gates' secretRef is read, only.
    prom = one(render({"versionSecrets": False,
                       "gates": {"allowedPrometheusAddresses": ["https://prometheus.monitoring:9090"]}}),
               "ClusterRole", "deployctl-controller")
    granted_prom = {}
    for g, res, verb, _ in grants(prom["rules"]):
        granted_prom.setdefault((g, res), set()).add(verb)
    assert granted_prom[("", "secrets")] == {"get"}
    binding = one(docs, "ClusterRoleBinding", "deployctl-controller")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                  "kind": "ClusterRole", "name": "deployctl-controller"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "deployctl",
                                    "namespace": NAMESPACE}]


def test_watch_namespace_turns_the_controller_role_into_a_namespaced_role():
    docs = render({"watchNamespace": "shop"})
    assert "deployctl-controller" not in names(docs, "ClusterRole")
    assert "deployctl-controller" not in names(docs, "ClusterRoleBinding")
    role = one(docs, "Role", "deployctl-controller")
    assert role["metadata"]["namespace"] == "shop"
    binding = one(docs, "RoleBinding", "deployctl-controller")
    assert binding["metadata"]["namespace"] == "shop"
    assert binding["subjects"][0]["namespace"] == NAMESPACE
    c = container(docs)
    assert "--namespace=shop" in c["args"]
    # The Lease stays in the controller's own namespace, where its Role is.
    assert f"--lease-namespace={NAMESPACE}" in c["args"]
    assert one(docs, "Role", "deployctl-leader-election")["metadata"]["namespace"] == NAMESPACE


def test_leader_election_may_touch_only_its_lease():
    docs = render()
    role = one(docs, "Role", "deployctl-leader-election")
    assert role["metadata"]["namespace"] == NAMESPACE
    rules = role["rules"]
    assert allows(rules, "coordination.k8s.io", "leases", "create")
    for verb in ("get", "update"):
        assert allows(rules, "coordination.k8s.io", "leases", verb, "deployctl-controller")
        assert not allows(rules, "coordination.k8s.io", "leases", verb, "someone-elses-lease")
    for verb in ("delete", "list", "watch", "patch"):
        assert not allows(rules, "coordination.k8s.io", "leases", verb, "deployctl-controller")
    for role in of_kind(docs, "ClusterRole"):
        assert not allows(role["rules"], "coordination.k8s.io", "leases", "update", "deployctl-controller")


def test_each_release_has_its_own_lease():
    def lease(name):
        args = container(render(name=name))["args"]
        return next(a.split("=", 1)[1] for a in args if a.startswith("--lease-name="))
    assert lease("deployctl") == "deployctl-controller"
    assert lease("team-a") == "team-a-deployctl-controller"
    assert lease("team-a") != lease("team-b")


def user_role(docs, which):
    return one(docs, "ClusterRole", f"deployctl-{which}")["rules"]


@pytest.mark.parametrize("resource", ["productionstacks", "stackoperations", "productionstacks/status",
                                      "stacksnapshots", "stacksnapshots/status"])
@pytest.mark.parametrize("which", ["viewer", "operator", "admin"])
def test_every_user_role_reads_stacks_and_history(which, resource):
    rules = user_role(render(), which)
    for verb in ("get", "list", "watch"):
        assert allows(rules, "deployctl.dev", resource, verb)
        assert allows(rules, "apps", "controllerrevisions", verb)


def test_viewer_changes_nothing():
    rules = user_role(render(), "viewer")
    assert {v for _, _, v, _ in grants(rules)} == {"get", "list", "watch"}


def test_operator_requests_operations_but_cannot_edit_stacks():
    rules = user_role(render(), "operator")
    assert allows(rules, "deployctl.dev", "stackoperations", "create")  # Restore too
    assert allows(rules, "deployctl.dev", "stacksnapshots", "create")   # a snapshot now
    for verb in ("create", "update", "patch", "delete"):
        assert not allows(rules, "deployctl.dev", "productionstacks", verb)
        assert not allows(rules, "deployctl.dev", "productionstacks/status", verb)
    # Operations are the record of who asked for what: not editable afterwards; nor are
    # snapshots, which rollbacks and restores depend on.
    for verb in ("update", "patch", "delete"):
        assert not allows(rules, "deployctl.dev", "stackoperations", verb)
        assert not allows(rules, "deployctl.dev", "stacksnapshots", verb)
        assert not allows(rules, "deployctl.dev", "stacksnapshots/status", verb)


def test_admin_edits_stacks_but_not_their_status():
    rules = user_role(render(), "admin")
    for verb in ("create", "update", "patch", "delete"):
        assert allows(rules, "deployctl.dev", "productionstacks", verb)
        assert allows(rules, "deployctl.dev", "stackoperations", verb)
        assert allows(rules, "deployctl.dev", "stacksnapshots", verb)
    for verb in ("update", "patch"):
        assert not allows(rules, "deployctl.dev", "productionstacks/status", verb)
        # A restore verifies data against the digest in a snapshot's status.
        assert not allows(rules, "deployctl.dev", "stacksnapshots/status", verb)


@pytest.mark.parametrize("which", ["viewer", "operator", "admin"])
def test_user_roles_grant_no_status_writes_and_no_wildcard_verbs(which):
    for g, res, verb, _ in grants(user_role(render(), which)):
        if res.endswith("/status"):
            assert verb in ("get", "list", "watch"), (which, res, verb)
        assert verb in ("get", "list", "watch", "create", "update", "patch", "delete"), (which, verb)


def aggregation(docs, which):
    labels = one(docs, "ClusterRole", f"deployctl-{which}")["metadata"]["labels"]
    return {k.rsplit("-", 1)[1] for k, v in labels.items()
            if k.startswith("rbac.authorization.k8s.io/aggregate-to-") and v == "true"}


def test_user_roles_aggregate_into_the_built_in_roles():
    docs = render()
    assert aggregation(docs, "viewer") == {"view", "edit", "admin"}
    assert aggregation(docs, "operator") == set()
    assert aggregation(docs, "admin") == {"edit", "admin"}


# --- NetworkPolicy ----------------------------------------------------------------------

def policy(values=None):
    return one(render(values), "NetworkPolicy")["spec"]


def test_network_policy_allows_only_metrics_in_and_dns_api_gates_out():
    spec = policy()
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "controller"
    assert spec["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}]}]
    dns, api, gates = spec["egress"]
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
    assert dns["to"] == [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]
    # Any address on the API server's ports, but never the cloud's metadata service.
    assert api["to"] == [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.0.0/16"]}}]
    assert [p["port"] for p in api["ports"]] == [443, 6443]
    # Gates reach the components' pods only (and what the administrator adds).
    assert gates == {"to": [{"namespaceSelector": {}, "podSelector": {
        "matchExpressions": [{"key": "deployctl.dev/stack", "operator": "Exists"}]}}]}


def test_gate_egress_follows_the_watched_namespace():
    gates = policy({"watchNamespace": "shop"})["egress"][2]
    assert gates["to"][0]["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "shop"}}


# --- every value ------------------------------------------------------------------------

def leaf_paths(schema: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, sub in schema.get("properties", {}).items():
        if key == "global":
            continue
        path = f"{prefix}{key}"
        if sub.get("type") == "object" and "properties" in sub:
            out |= leaf_paths(sub, path + ".")
        else:
            out.add(path)
    return out


def values_yaml_leaves(node, prefix=""):
    out = set()
    for key, sub in node.items():
        path = f"{prefix}{key}"
        if isinstance(sub, dict) and sub and path not in FREE_FORM:
            out |= values_yaml_leaves(sub, path + ".")
        else:
            out.add(path)
    return out


FREE_FORM = {"resources", "agent.resources", "podSecurityContext", "securityContext", "affinity"}


def ctl(docs):
    return container(docs)


def env_of(docs):
    return {e["name"]: e.get("value") for e in ctl(docs).get("env", [])}


def pod_spec(docs):
    return deployment(docs)["spec"]["template"]["spec"]


def check_names(prefix):
    def check(docs):
        assert deployment(docs)["metadata"]["name"] == prefix
        assert f"{prefix}-viewer" in names(docs, "ClusterRole")
        return True
    return check


# path -> (value, other values it needs, check of the rendered objects)
CASES = {
    "nameOverride": ("stacks", {}, lambda d: (
        deployment(d)["metadata"]["labels"]["app.kubernetes.io/name"] == "stacks"
        and deployment(d)["metadata"]["name"] == "deployctl-stacks")),
    "fullnameOverride": ("dc", {}, check_names("dc")),
    "image.repository": ("registry.example/deployctl", {}, lambda d: (
        ctl(d)["image"] == env_of(d)["DEPLOYCTL_AGENT_IMAGE"] == "registry.example/deployctl:0.1.0")),
    "image.tag": ("v9", {}, lambda d: (
        ctl(d)["image"] == env_of(d)["DEPLOYCTL_AGENT_IMAGE"] == "deployctl.dev/deployctl:v9")),
    "image.digest": ("sha256:" + "a" * 64, {}, lambda d: (
        ctl(d)["image"] == env_of(d)["DEPLOYCTL_AGENT_IMAGE"]
        == "deployctl.dev/deployctl:0.1.0@sha256:" + "a" * 64)),
    "image.pullPolicy": ("Always", {}, lambda d: ctl(d)["imagePullPolicy"] == "Always"),
    "imagePullSecrets": ([{"name": "regcred"}], {}, lambda d: pod_spec(d)["imagePullSecrets"] == [{"name": "regcred"}]),
    "replicaCount": (3, {}, lambda d: deployment(d)["spec"]["replicas"] == 3),
    "watchNamespace": ("shop", {}, lambda d: "--namespace=shop" in ctl(d)["args"]),
    "leaderElection.enabled": (False, {"replicaCount": 1}, lambda d: "--leader-elect=false" in ctl(d)["args"]),
    "leaderElection.leaseName": ("my-lease", {}, lambda d: (
        "--lease-name=my-lease" in ctl(d)["args"]
        and one(d, "Role", "deployctl-leader-election")["rules"][1]["resourceNames"] == ["my-lease"])),
    "leaderElection.leaseDuration": ("30s", {}, lambda d: "--lease-duration=30s" in ctl(d)["args"]),
    "resync": ("10m", {}, lambda d: "--resync=10m" in ctl(d)["args"]),
    "versionSecrets": (False, {}, lambda d: "--version-secrets=false" in ctl(d)["args"]),
    "logging.format": ("text", {}, lambda d: "--log-format=text" in ctl(d)["args"]),
    "logging.level": ("debug", {}, lambda d: env_of(d)["RUST_LOG"] == "debug"),
    "metrics.port": (9090, {}, lambda d: (
        "--metrics-addr=0.0.0.0:9090" in ctl(d)["args"]
        and ctl(d)["ports"][0]["containerPort"] == 9090
        and one(d, "Service")["spec"]["ports"][0]["port"] == 9090)),
    "serviceAccount.create": (False, {"serviceAccount.name": "ctl"}, lambda d: (
        not of_kind(d, "ServiceAccount") and pod_spec(d)["serviceAccountName"] == "ctl")),
    "serviceAccount.name": ("ctl", {}, lambda d: (
        one(d, "ServiceAccount")["metadata"]["name"] == "ctl"
        and pod_spec(d)["serviceAccountName"] == "ctl"
        and one(d, "ClusterRoleBinding")["subjects"][0]["name"] == "ctl")),
    "serviceAccount.annotations": ({"iam.example/role": "x"}, {}, lambda d: (
        one(d, "ServiceAccount")["metadata"]["annotations"] == {"iam.example/role": "x"})),
    "rbac.create": (False, {}, lambda d: (
        not of_kind(d, "ClusterRoleBinding") and not of_kind(d, "RoleBinding")
        and names(d, "ClusterRole") == {"deployctl-viewer", "deployctl-operator", "deployctl-admin"})),
    "userRoles.create": (False, {}, lambda d: names(d, "ClusterRole") == {"deployctl-controller"}),
    "userRoles.aggregateToDefaultRoles": (False, {}, lambda d: (
        aggregation(d, "viewer") == set() and aggregation(d, "admin") == set())),
    "podDisruptionBudget.enabled": (False, {}, lambda d: not of_kind(d, "PodDisruptionBudget")),
    "agent.resources": ({"requests": {"cpu": "2"}}, {}, lambda d: json.loads(
        env_of(d)["DEPLOYCTL_AGENT_RESOURCES"])["requests"]["cpu"] == "2"),
    "admissionPolicy.enabled": (False, {}, lambda d: not of_kind(d, "ValidatingAdmissionPolicy")
                                and not of_kind(d, "ValidatingAdmissionPolicyBinding")),
    "podDisruptionBudget.minAvailable": (2, {"replicaCount": 3}, lambda d: (
        one(d, "PodDisruptionBudget")["spec"]["minAvailable"] == 2)),
    "resources": ({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}}, {},
                  lambda d: ctl(d)["resources"]["limits"] == {"cpu": "2", "memory": "1Gi"}),
    # Helm merges maps: a key set here replaces the default's, the others stay hardened.
    "podSecurityContext": ({"runAsUser": 1000}, {}, lambda d: pod_spec(d)["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"}}),
    # null removes a key, e.g. on OpenShift, which assigns the UID itself.
    "securityContext": ({"runAsUser": None, "runAsGroup": None}, {}, lambda d: (
        "runAsUser" not in ctl(d)["securityContext"]
        and ctl(d)["securityContext"]["readOnlyRootFilesystem"] is True)),
    "podAnnotations": ({"example.com/team": "platform"}, {}, lambda d: (
        deployment(d)["spec"]["template"]["metadata"]["annotations"] == {"example.com/team": "platform"})),
    "podLabels": ({"team": "platform"}, {}, lambda d: (
        deployment(d)["spec"]["template"]["metadata"]["labels"]["team"] == "platform"
        and "team" not in deployment(d)["spec"]["selector"]["matchLabels"])),
    "priorityClassName": ("system-cluster-critical", {}, lambda d: pod_spec(d)["priorityClassName"] == "system-cluster-critical"),
    "nodeSelector": ({"kubernetes.io/os": "linux"}, {}, lambda d: pod_spec(d)["nodeSelector"] == {"kubernetes.io/os": "linux"}),
    "tolerations": ([{"key": "infra", "operator": "Exists", "effect": "NoSchedule"}], {}, lambda d: (
        pod_spec(d)["tolerations"][0]["key"] == "infra")),
    "affinity": ({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "infra", "operator": "Exists"}]}]}}}, {}, lambda d: (
        set(pod_spec(d)["affinity"]) == {"nodeAffinity"})),
    "networkPolicy.enabled": (False, {}, lambda d: not of_kind(d, "NetworkPolicy")),
    "networkPolicy.metricsFrom": ([{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}], {}, lambda d: (
        one(d, "NetworkPolicy")["spec"]["ingress"][0]["from"] == [
            {"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}])),
    "networkPolicy.dns.to": ([{"ipBlock": {"cidr": "169.254.20.10/32"}}], {}, lambda d: (
        one(d, "NetworkPolicy")["spec"]["egress"][0]["to"] == [{"ipBlock": {"cidr": "169.254.20.10/32"}}])),
    "networkPolicy.apiServer.cidrs": (["10.0.0.10/32", "10.0.0.11/32"], {}, lambda d: (
        one(d, "NetworkPolicy")["spec"]["egress"][1]["to"] == [
            {"ipBlock": {"cidr": "10.0.0.10/32"}}, {"ipBlock": {"cidr": "10.0.0.11/32"}}])),
    "networkPolicy.apiServer.ports": ([6443], {}, lambda d: (
        one(d, "NetworkPolicy")["spec"]["egress"][1]["ports"] == [{"port": 6443, "protocol": "TCP"}])),
    "networkPolicy.gateTargets.enabled": (False, {}, lambda d: len(one(d, "NetworkPolicy")["spec"]["egress"]) == 2),
    "networkPolicy.gateTargets.namespaceSelector": ({"matchLabels": {"team": "shop"}}, {}, lambda d: (
        one(d, "NetworkPolicy")["spec"]["egress"][2]["to"][0]["namespaceSelector"] == {"matchLabels": {"team": "shop"}})),
    "networkPolicy.gateTargets.podSelector": ({"matchLabels": {"app": "x"}}, {}, lambda d: (
        one(d, "NetworkPolicy")["spec"]["egress"][2]["to"][0]["podSelector"] == {"matchLabels": {"app": "x"}})),
    "networkPolicy.gateTargets.ports": ([{"port": 8080, "protocol": "TCP"}], {}, lambda d: (
        one(d, "NetworkPolicy")["spec"]["egress"][2]["ports"] == [{"port": 8080, "protocol": "TCP"}])),
    "networkPolicy.prometheus.to": ([{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}], {}, lambda d: (
        one(d, "NetworkPolicy")["spec"]["egress"][3] == {"to": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]})),
    "networkPolicy.prometheus.ports": ([{"port": 9090, "protocol": "TCP"}], {"networkPolicy.prometheus.to": [{"podSelector": {}}]},
                                       lambda d: one(d, "NetworkPolicy")["spec"]["egress"][3]["ports"] == [{"port": 9090, "protocol": "TCP"}]),
    "gates.allowedUrlPrefixes": (["https://status.example.com/checks/", "http://smoke.qa:8080/"], {}, lambda d: (
        env_of(d).get("DEPLOYCTL_GATE_ALLOWED_URL_PREFIXES") == "https://status.example.com/checks/,http://smoke.qa:8080/")),
    "gates.allowedPrometheusAddresses": (["http://prometheus-operated.monitoring:9090"], {}, lambda d: (
        env_of(d).get("DEPLOYCTL_GATE_ALLOWED_PROMETHEUS") == "http://prometheus-operated.monitoring:9090")),
    "notifications.allowedUrlPrefixes": (["https://hooks.slack.com/services/", "http://hooks.internal:8080/"], {}, lambda d: (
        env_of(d).get("DEPLOYCTL_NOTIFICATION_ALLOWED_URL_PREFIXES")
        == "https://hooks.slack.com/services/,http://hooks.internal:8080/")),
    "networkPolicy.extraEgress": ([{"to": [{"ipBlock": {"cidr": "192.0.2.10/32"}}], "ports": [{"port": 9090}]}], {},
                                  lambda d: one(d, "NetworkPolicy")["spec"]["egress"][3]["ports"] == [{"port": 9090}]),
    "serviceMonitor.enabled": (True, {}, lambda d: (
        one(d, "ServiceMonitor")["spec"]["selector"]["matchLabels"].items()
        <= one(d, "Service")["metadata"]["labels"].items()
        and one(d, "ServiceMonitor")["spec"]["jobLabel"] == "app.kubernetes.io/name"
        and one(d, "Service")["metadata"]["labels"]["app.kubernetes.io/name"] == "deployctl"
        and one(d, "ServiceMonitor")["spec"]["endpoints"][0]["port"] == "metrics")),
    "serviceMonitor.labels": ({"release": "kps"}, {"serviceMonitor.enabled": True}, lambda d: (
        one(d, "ServiceMonitor")["metadata"]["labels"]["release"] == "kps")),
    "serviceMonitor.interval": ("15s", {"serviceMonitor.enabled": True}, lambda d: (
        one(d, "ServiceMonitor")["spec"]["endpoints"][0]["interval"] == "15s")),
    "serviceMonitor.scrapeTimeout": ("5s", {"serviceMonitor.enabled": True}, lambda d: (
        one(d, "ServiceMonitor")["spec"]["endpoints"][0]["scrapeTimeout"] == "5s")),
    "prometheusRule.enabled": (True, {}, lambda d: len(one(d, "PrometheusRule")["spec"]["groups"][0]["rules"]) > 5),
    "prometheusRule.labels": ({"release": "kps"}, {"prometheusRule.enabled": True}, lambda d: (
        one(d, "PrometheusRule")["metadata"]["labels"]["release"] == "kps")),
    "prometheusRule.runbookBaseURL": ("https://wiki.example/runbooks/", {"prometheusRule.enabled": True}, lambda d: all(
        r["annotations"]["runbook_url"].startswith("https://wiki.example/runbooks/")
        for r in one(d, "PrometheusRule")["spec"]["groups"][0]["rules"])),
}


def test_every_value_has_a_case_and_a_schema():
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    in_values = values_yaml_leaves(values)
    assert leaf_paths(schema) == in_values, "values.yaml and values.schema.json disagree"
    assert set(CASES) == in_values, (
        f"values without a test case: {sorted(in_values - set(CASES))}; "
        f"cases for values that do not exist: {sorted(set(CASES) - in_values)}")


@pytest.mark.parametrize("path", sorted(CASES))
def test_value_changes_what_it_says(path):
    value, others, check = CASES[path]
    values = nested(path, value)
    for other, v in others.items():
        values = set_path(values, other, v)
    docs = render(values)
    baseline = render(_without(values, path))
    assert docs != baseline, f"setting {path} changed nothing"
    assert check(docs), f"{path}={value!r} did not render as expected"
    report = lint(values)
    assert report["errors"] == [], report


def _without(values, path):
    """`values` with `path` put back to its default."""
    out = copy.deepcopy(values)
    node = out
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[k]
    del node[keys[-1]]
    return out


# --- other objects ----------------------------------------------------------------------

def test_pod_disruption_budget_only_with_several_replicas():
    docs = render()
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"] == deployment(docs)["spec"]["selector"]
    assert not of_kind(render({"replicaCount": 1}), "PodDisruptionBudget")


def test_metrics_service_selects_the_controller_pods():
    docs = render()
    svc = one(docs, "Service", "deployctl-metrics")
    assert svc["spec"]["selector"] == deployment(docs)["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}]


def test_default_affinity_spreads_this_release_over_nodes():
    docs = render()
    term = pod_spec(docs)["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == deployment(docs)["spec"]["selector"]["matchLabels"]


def test_optional_monitoring_objects_are_off_by_default():
    docs = render()
    assert not of_kind(docs, "ServiceMonitor") and not of_kind(docs, "PrometheusRule")


def test_every_object_is_labelled_and_namespaced():
    docs = render({"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}})
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy",
                      "ValidatingAdmissionPolicyBinding"}
    for d in docs:
        labels = d["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "deployctl", d["metadata"]
        assert labels.get("app.kubernetes.io/instance") == "deployctl", d["metadata"]
        if d["kind"] not in cluster_scoped:
            assert d["metadata"].get("namespace"), f"{d['kind']} {d['metadata']['name']} has no namespace"


def test_notes_tell_how_to_check_and_bind():
    text = notes()
    assert "kubectl -n deployctl-system rollout status deployment/deployctl" in text
    assert "--clusterrole=deployctl-operator" in text
    assert "deployctl-controller" in text
    assert "NOWHERE" in notes({"networkPolicy": {"gateTargets": {"enabled": False}}})
    # Which Secrets the controller reads, and where the snapshot Secrets go.
    assert "never reads snapshot Secrets" in text
    assert "may get (never list) Secrets" in notes({"versionSecrets": False})
    assert "spec.snapshots.encryption.keySecret" in text
