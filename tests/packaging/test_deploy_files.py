"""deploy/: the Dockerfile (which cannot be built here: no container engine, so these
checks stand in for review) and the GitOps examples."""

from __future__ import annotations

import re
import tomllib

import yaml

from support import REPO, container, render

DOCKERFILE = REPO / "deploy/Dockerfile"


def test_dockerfile_builds_the_controller_with_the_pinned_toolchain():
    text = DOCKERFILE.read_text()
    channel = tomllib.loads((REPO / "rust-toolchain.toml").read_text())["toolchain"]["channel"]
    minor = ".".join(channel.split(".")[:2])
    builder = re.search(r"^FROM rust:(\S+) AS build$", text, re.M)
    assert builder, "the builder stage must be FROM rust:<version> AS build"
    assert builder.group(1).startswith(minor), f"builder rust:{builder.group(1)} vs toolchain {channel}"
    cargo = tomllib.loads((REPO / "controller/Cargo.toml").read_text())
    assert f"-p {cargo['package']['name']}" in text
    assert "--bin deployctl-controller" in text and "--locked" in text
    assert "-unknown-linux-musl" in text, "the runtime image has no libc: build static"


def test_runtime_image_is_distroless_nonroot_and_runs_the_controller():
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert stages[-1].startswith("gcr.io/distroless/static"), stages
    assert stages[-1].endswith(":nonroot")
    final = text[text.rindex("FROM "):]
    assert re.search(r"^USER 65532(:65532)?$", final, re.M)
    assert 'ENTRYPOINT ["/usr/local/bin/deployctl-controller"]' in final
    assert "NOT BUILT IN CI" in text


def test_the_chart_runs_the_image_as_its_user():
    c = container(render())
    assert c["securityContext"]["runAsUser"] == 65532
    assert c["image"].startswith("deployctl.dev/deployctl:")


def test_dockerignore_keeps_the_build_context_small():
    ignored = (REPO / "deploy/Dockerfile.dockerignore").read_text().split()
    assert {"target", ".git"} <= set(ignored)


def test_gitops_examples_point_at_the_example_stack():
    app = yaml.safe_load((REPO / "deploy/gitops/argocd/application.yaml").read_text())
    flux = list(yaml.safe_load_all((REPO / "deploy/gitops/flux/kustomization.yaml").read_text()))
    ks = next(d for d in flux if d["kind"] == "Kustomization")
    assert (REPO / app["spec"]["source"]["path"] / "kustomization.yaml").is_file()
    assert (REPO / ks["spec"]["path"] / "kustomization.yaml").is_file()
    assert ks["spec"]["wait"] is True
    stack = yaml.safe_load((REPO / "deploy/gitops/stack/productionstack.yaml").read_text())
    assert stack["apiVersion"] == "deployctl.dev/v1alpha1" and stack["kind"] == "ProductionStack"
