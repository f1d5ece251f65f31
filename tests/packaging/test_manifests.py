"""manifests/install: the chart rendered with default values, for `kubectl apply`."""

import subprocess

import yaml

from support import NAMESPACE, REPO, render

INSTALL = REPO / "manifests/install/deployctl.yaml"


def test_install_manifests_are_the_rendered_chart():
    check = subprocess.run(["bash", "scripts/render-manifests.sh", "--check"], cwd=REPO,
                           capture_output=True, text=True)
    assert check.returncode == 0, (
        "manifests/install/deployctl.yaml is out of date; run scripts/render-manifests.sh\n"
        + check.stdout[-4000:] + check.stderr)


def test_install_manifests_hold_every_default_object_in_one_namespace():
    docs = [d for d in yaml.safe_load_all(INSTALL.read_text()) if d]
    assert docs[0] == {"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": NAMESPACE,
                                    "labels": {"app.kubernetes.io/part-of": "deployctl"}}}
    rendered = sorted((d["kind"], d["metadata"]["name"]) for d in render())
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs[1:]) == rendered
    for d in docs[1:]:
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy",
                             "ValidatingAdmissionPolicyBinding"):
            assert d["metadata"]["namespace"] == NAMESPACE, d["metadata"]


def test_install_manifests_come_after_the_crds_in_the_instructions():
    head = INSTALL.read_text().split("---", 1)[0]
    assert "kubectl apply --server-side -f manifests/crds/" in head
    assert "kubectl apply --server-side -f manifests/install/deployctl.yaml" in head


def test_install_manifests_grant_only_get_on_secrets_and_run_agents_from_the_controller_image():
    docs = [d for d in yaml.safe_load_all(INSTALL.read_text()) if d]
    for d in docs:
        if d["kind"] in ("Role", "ClusterRole"):
            for rule in d["rules"]:
                if "secrets" in rule.get("resources", []):
                    assert d["metadata"]["name"] == "deployctl-controller", (d["metadata"]["name"], rule)
                    assert rule["verbs"] == ["get"] and rule["resources"] == ["secrets"], rule
    ctl = next(d for d in docs if d["kind"] == "ClusterRole"
               and d["metadata"]["name"] == "deployctl-controller")
    snapshots = [r for r in ctl["rules"] if "stacksnapshots" in r["resources"]]
    assert snapshots and set(snapshots[0]["verbs"]) == {
        "get", "list", "watch", "create", "patch", "update", "delete"}
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    c = deploy["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["DEPLOYCTL_AGENT_IMAGE"] == c["image"] == "deployctl.dev/deployctl:0.1.0"
    assert not any("SECRET" in name for name in env), env
