"""Shared helpers of the packaging tests: render the chart with Helm's own engine
(helm-python-sdk), parse what it rendered, and answer RBAC questions about it."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any, Iterable

import helm_python
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "deployctl"
RELEASE = "deployctl"
NAMESPACE = "deployctl-system"


def chart_for(kube) -> helm_python.Chart:
    """The chart as this cluster can take it. Helm 4 installs CRDs by server-side apply, and
    an API server older than 1.25 refuses the CEL rules (`x-kubernetes-validations`) in
    such an apply (it drops them from a CRD it creates). For those servers: a copy of the
    chart whose CRDs leave the rules out, which is the CRD such a server would store. See
    docs/operations.md on installing on clusters older than 1.25."""
    if kube.keeps_cel_rules():
        return helm_python.Chart.load(str(CHART_DIR))
    import shutil
    import tempfile

    from kube import strip_cel_rules

    copy_dir = Path(tempfile.mkdtemp(prefix="deployctl-chart-")) / "deployctl"
    shutil.copytree(CHART_DIR, copy_dir)
    for crd in (copy_dir / "crds").glob("*.yaml"):
        docs = [strip_cel_rules(d) for d in yaml.safe_load_all(crd.read_text()) if d]
        crd.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return helm_python.Chart.load(str(copy_dir))


@functools.lru_cache(maxsize=None)
def _chart() -> helm_python.Chart:
    return helm_python.Chart.load(str(CHART_DIR))


def render_raw(values: dict | None = None, *, name: str = RELEASE,
               namespace: str = NAMESPACE) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` would give it."""
    return _chart().render(copy.deepcopy(values or {}), name=name, namespace=namespace)


def render(values: dict | None = None, *, name: str = RELEASE,
           namespace: str = NAMESPACE) -> list[dict]:
    """Every rendered Kubernetes object (NOTES.txt left out)."""
    docs = []
    for path, text in sorted(render_raw(values, name=name, namespace=namespace).items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {})
                docs.append(doc)
    return docs


def notes(values: dict | None = None) -> str:
    raw = render_raw(values)
    return next(text for path, text in raw.items() if path.endswith("NOTES.txt"))


def of_kind(docs: Iterable[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: Iterable[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in of_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, (
        f"expected exactly one {kind} {name or ''}, found "
        f"{[d['metadata']['name'] for d in found]}")
    return found[0]


def names(docs: Iterable[dict], kind: str) -> set[str]:
    return {d["metadata"]["name"] for d in of_kind(docs, kind)}


def deployment(docs: list[dict]) -> dict:
    return one(docs, "Deployment")


def container(docs: list[dict]) -> dict:
    containers = deployment(docs)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["controller"]
    return containers[0]


def lint(values: dict | None = None) -> dict[str, Any]:
    """helm lint; returns the report ({messages: [{severity, path, error}], errors})."""
    return helm_python.lint(str(CHART_DIR), copy.deepcopy(values) if values else None,
                            strict=True)


def set_path(values: dict, dotted: str, value: Any) -> dict:
    """A copy of `values` with `a.b.c` set to `value`."""
    out = copy.deepcopy(values)
    node = out
    keys = dotted.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return out


def nested(dotted: str, value: Any) -> dict:
    return set_path({}, dotted, value)


# --- RBAC -----------------------------------------------------------------------------

def allows(rules: list[dict], group: str, resource: str, verb: str,
           name: str | None = None) -> bool:
    """Whether a PolicyRule list grants `verb` on `group/resource` (optionally one object
    `name`), the way the RBAC authorizer decides. Wildcards count, so a test that asks
    finds them too."""
    for r in rules:
        if group not in r.get("apiGroups", []) and "*" not in r.get("apiGroups", []):
            continue
        if resource not in r.get("resources", []) and "*" not in r.get("resources", []):
            continue
        if verb not in r.get("verbs", []) and "*" not in r.get("verbs", []):
            continue
        restricted = r.get("resourceNames")
        if restricted and (name is None or name not in restricted):
            continue
        return True
    return False


def grants(rules: list[dict]) -> set[tuple[str, str, str, tuple[str, ...]]]:
    """Every (group, resource, verb, resourceNames) a rule list grants, flattened."""
    out = set()
    for r in rules:
        for g in r.get("apiGroups", []):
            for res in r.get("resources", []):
                for v in r.get("verbs", []):
                    out.add((g, res, v, tuple(r.get("resourceNames", []) or ())))
    return out


def roles(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in ("Role", "ClusterRole")]


def with_images(doc, demo_repository: str):
    """`doc` (any manifest) with each `deployctl.dev/demo-app:<tag>` image replaced by the
    same tag of `demo_repository`: the examples name the image as the README builds it, the
    cluster tests pull it from the sandbox's registry."""
    if isinstance(doc, dict):
        return {k: (v.replace("deployctl.dev/demo-app:", demo_repository + ":", 1)
                    if k == "image" and isinstance(v, str) else with_images(v, demo_repository))
                for k, v in doc.items()}
    if isinstance(doc, list):
        return [with_images(v, demo_repository) for v in doc]
    return doc
