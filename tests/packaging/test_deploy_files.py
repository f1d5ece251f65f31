"""deploy/: the GitOps examples. (The image is built by scripts/build-image.sh:
test_image.py.)"""

from __future__ import annotations

import yaml

from support import REPO


def test_gitops_examples_point_at_the_example_stack():
    app = yaml.safe_load((REPO / "deploy/gitops/argocd/application.yaml").read_text())
    flux = list(yaml.safe_load_all((REPO / "deploy/gitops/flux/kustomization.yaml").read_text()))
    ks = next(d for d in flux if d["kind"] == "Kustomization")
    assert (REPO / app["spec"]["source"]["path"] / "kustomization.yaml").is_file()
    assert (REPO / ks["spec"]["path"] / "kustomization.yaml").is_file()
    assert ks["spec"]["wait"] is True
    stack = yaml.safe_load((REPO / "deploy/gitops/stack/productionstack.yaml").read_text())
    assert stack["apiVersion"] == "deployctl.dev/v1alpha1" and stack["kind"] == "ProductionStack"
