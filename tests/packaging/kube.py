"""A small Kubernetes API client for the cluster tests (standard library only): reads a
kubeconfig with embedded certificates or a token, finds resources through discovery, and
does server-side apply (optionally as a dry run) and SubjectAccessReviews."""

from __future__ import annotations

import base64
import copy
import json
import os
import ssl
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml


class ApiError(Exception):
    def __init__(self, method: str, path: str, status: int, body: str):
        self.status = status
        try:
            message = json.loads(body).get("message", body)
        except ValueError:
            message = body
        super().__init__(f"{method} {path}: {status} {message}")


class Kube:
    FIELD_MANAGER = "deployctl-packaging-tests"

    def __init__(self, kubeconfig: str | Path):
        config = yaml.safe_load(Path(kubeconfig).read_text())
        ctx_name = config.get("current-context") or config["contexts"][0]["name"]
        ctx = next(c["context"] for c in config["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == ctx["user"])
        self.server = cluster["server"].rstrip("/")
        self._tmp = tempfile.TemporaryDirectory(prefix="deployctl-pkg-kube-")
        self.ssl = ssl.create_default_context()
        if "certificate-authority-data" in cluster:
            self.ssl.load_verify_locations(
                cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
        elif "certificate-authority" in cluster:
            self.ssl.load_verify_locations(cafile=cluster["certificate-authority"])
        self.headers = {}
        if "client-certificate-data" in user:
            cert = Path(self._tmp.name, "client.crt")
            key = Path(self._tmp.name, "client.key")
            cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
            key.write_bytes(base64.b64decode(user["client-key-data"]))
            os.chmod(key, 0o600)
            self.ssl.load_cert_chain(str(cert), str(key))
        elif "client-certificate" in user:
            self.ssl.load_cert_chain(user["client-certificate"], user["client-key"])
        if "token" in user:
            self.headers["Authorization"] = f"Bearer {user['token']}"
        self._resources: dict[str, dict[str, dict]] = {}

    def request(self, method: str, path: str, body=None, *, content_type="application/json",
                params: dict | None = None):
        url = self.server + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = None
        if body is not None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={**self.headers, "Content-Type": content_type,
                                              "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, context=self.ssl, timeout=30) as resp:
                text = resp.read().decode()
        except urllib.error.HTTPError as e:
            raise ApiError(method, path, e.code, e.read().decode()) from None
        return json.loads(text) if text else None

    def as_user(self, user: str) -> "Kube":
        """This client impersonating `user` (the kubeconfig's user must be allowed to)."""
        other = copy.copy(self)
        other.headers = {**self.headers, "Impersonate-User": user}
        return other

    def get(self, path: str):
        return self.request("GET", path)

    def exists(self, path: str) -> bool:
        try:
            self.get(path)
            return True
        except ApiError as e:
            if e.status == 404:
                return False
            raise

    # --- discovery -------------------------------------------------------------------

    def _group_resources(self, api_version: str) -> dict[str, dict]:
        if api_version not in self._resources:
            base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            try:
                listing = self.get(base)
            except ApiError as e:
                if e.status == 404:
                    listing = {"resources": []}
                else:
                    raise
            self._resources[api_version] = {
                r["kind"]: r for r in listing["resources"] if "/" not in r["name"]}
        return self._resources[api_version]

    def serves(self, api_version: str, kind: str) -> bool:
        return kind in self._group_resources(api_version)

    def path_of(self, obj: dict, namespace: str | None = None) -> str:
        api_version, kind = obj["apiVersion"], obj["kind"]
        resource = self._group_resources(api_version).get(kind)
        if resource is None:
            raise LookupError(f"the API server does not serve {kind} in {api_version}")
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        ns = obj["metadata"].get("namespace") or namespace
        prefix = f"{base}/namespaces/{ns}" if resource["namespaced"] else base
        return f"{prefix}/{resource['name']}/{obj['metadata']['name']}"

    # --- writes ----------------------------------------------------------------------

    def keeps_cel_rules(self) -> bool:
        """Whether the server knows CRD `x-kubernetes-validations` (CEL, 1.25+)."""
        if not hasattr(self, "_keeps_cel"):
            v = self.get("/version")
            minor = int("".join(ch for ch in v.get("minor", "0") if ch.isdigit()) or 0)
            self._keeps_cel = v.get("major") != "1" or minor >= 25
        return self._keeps_cel

    def apply(self, obj: dict, *, namespace: str | None = None, dry_run: bool = False):
        """Server-side apply (creates or updates). A server older than 1.25 refuses CEL
        rules in a server-side applied CRD (it would drop them from one it creates), so
        they are left out there: the CRD that server would store."""
        if obj.get("kind") == "CustomResourceDefinition" and not self.keeps_cel_rules():
            obj = strip_cel_rules(obj)
        params = {"fieldManager": self.FIELD_MANAGER, "force": "true"}
        if dry_run:
            params["dryRun"] = "All"
        return self.request("PATCH", self.path_of(obj, namespace), json.dumps(obj),
                            content_type="application/apply-patch+yaml", params=params)

    def delete(self, obj: dict, *, namespace: str | None = None):
        try:
            self.request("DELETE", self.path_of(obj, namespace),
                         {"kind": "DeleteOptions", "apiVersion": "v1",
                          "propagationPolicy": "Background"})
        except ApiError as e:
            if e.status != 404:
                raise

    def can(self, user: str, verb: str, group: str, resource: str, *,
            namespace: str | None = None, name: str | None = None,
            groups: list[str] | None = None) -> bool:
        """What the API server's authorizer decides for `user` (a SubjectAccessReview)."""
        attrs = {"verb": verb, "group": group, "resource": resource}
        if "/" in resource:
            attrs["resource"], attrs["subresource"] = resource.split("/", 1)
        if namespace:
            attrs["namespace"] = namespace
        if name:
            attrs["name"] = name
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                  "spec": {"user": user, "groups": groups or ["system:authenticated"],
                           "resourceAttributes": attrs}}
        out = self.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
        return bool(out["status"].get("allowed"))


def strip_cel_rules(value):
    """A copy of `value` without any `x-kubernetes-validations`."""
    if isinstance(value, dict):
        return {k: strip_cel_rules(v) for k, v in value.items() if k != "x-kubernetes-validations"}
    if isinstance(value, list):
        return [strip_cel_rules(v) for v in value]
    return value


def wait_for(what: str, check, timeout: float = 30.0):
    """Polls `check` until it returns something true, and returns that."""
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.5)
