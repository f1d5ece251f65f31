"""The Argo CD health check of ProductionStack (deploy/gitops/argocd), run on a real Lua
interpreter: each case is a stack as JSON, turned into a Lua table and handed to the
script as `obj`, the way Argo CD calls it."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from support import REPO

ARGOCD = REPO / "deploy/gitops/argocd"
SCRIPT = ARGOCD / "health-productionstack.lua"
KEY = "resource.customizations.health.deployctl.dev_ProductionStack"


def lua() -> str:
    for name in ("lua5.4", "lua5.3", "lua5.1", "lua"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("no Lua interpreter: apt-get install lua5.4")


def to_lua(value) -> str:
    """A JSON value as a Lua literal (null becomes nil, as Argo CD hands it over)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid Lua escapes for this text
    if isinstance(value, list):
        return "{" + ", ".join(to_lua(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{json.dumps(k)}] = {to_lua(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def health(stack: dict) -> tuple[str, str]:
    program = (
        f"obj = {to_lua(stack)}\n"
        f"local check = assert(loadfile({json.dumps(str(SCRIPT))}))\n"
        "local hs = check()\n"
        "io.write(hs.status, '\\n', hs.message or '', '\\n')\n")
    out = subprocess.run([lua(), "-"], input=program, capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    status, message = out.stdout.split("\n")[:2]
    return status, message


def stack(phase=None, generation=3, observed=3, message=None, conditions=None):
    s = {"apiVersion": "deployctl.dev/v1alpha1", "kind": "ProductionStack",
         "metadata": {"name": "shop", "namespace": "shop", "generation": generation}, "spec": {}}
    status = {}
    if phase is not None:
        status["phase"] = phase
    if observed is not None:
        status["observedGeneration"] = observed
    if message is not None:
        status["message"] = message
    if conditions is not None:
        status["conditions"] = conditions
    if status:
        s["status"] = status
    return s


def test_configmap_carries_the_script():
    cm = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    assert cm["metadata"]["name"] == "argocd-cm"
    assert cm["data"][KEY] == SCRIPT.read_text(), "argocd-cm.yaml and health-productionstack.lua differ"


@pytest.mark.parametrize("phase,expected", [
    ("Healthy", "Healthy"),
    ("Progressing", "Progressing"),
    ("RollingBack", "Progressing"),
    ("Terminating", "Progressing"),
    ("Paused", "Suspended"),
    ("Degraded", "Degraded"),
    ("RolledBack", "Degraded"),
    ("Invalid", "Degraded"),
])
def test_phase_maps_to_argo_health(phase, expected):
    status, message = health(stack(phase, message="revision 3 is Healthy"))
    assert status == expected
    assert message == f"{phase}: revision 3 is Healthy"


def test_every_phase_of_the_crd_is_mapped():
    crd = yaml.safe_load((REPO / "manifests/crds/productionstacks.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    phases = schema["properties"]["status"]["properties"]["phase"]["enum"]
    for phase in phases:
        assert health(stack(phase))[0] != "Unknown", f"phase {phase} is not mapped"


def test_a_new_stack_is_progressing_until_the_controller_reports():
    assert health(stack(observed=None)) == (
        "Progressing", "Waiting for the deployctl controller to report on this stack")


def test_a_new_generation_is_progressing_even_if_the_old_one_was_healthy():
    status, message = health(stack("Healthy", generation=4, observed=3))
    assert status == "Progressing"
    assert message == "Waiting for the deployctl controller to observe generation 4"


def test_missing_observed_generation_is_not_trusted():
    assert health(stack("Healthy", observed=None))[0] == "Progressing"


def test_message_falls_back_to_the_ready_condition():
    conds = [{"type": "Reconciling", "status": "False", "message": "no rollout in progress"},
             {"type": "Ready", "status": "False", "reason": "RolledBack",
              "message": "rolled back to revision 2"}]
    assert health(stack("RolledBack", conditions=conds)) == (
        "Degraded", "RolledBack: rolled back to revision 2")


def test_unknown_phase_is_unknown():
    assert health(stack("Exploded"))[0] == "Unknown"


def test_phase_without_message():
    assert health(stack("Paused")) == ("Suspended", "Paused")
