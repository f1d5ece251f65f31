"""scripts/build-image.sh: the controller's and the demo app's OCI images, built from Debian
packages with mmdebstrap and umoci (no container engine). What a user relies on: two builds
of the same binaries give the same manifest digest; the image runs its binary as the
non-root user with a read-only root; it has a CA bundle and no shell; and a push lands in a
real registry (docker-registry on loopback) under the digest the build printed.

The images are built from the workspace's debug binaries (`cargo build --workspace --bins`,
which tests/packaging/with-sandbox.sh runs). Needs root and the Debian packages that
scripts/install-platform.sh installs (mmdebstrap, umoci, skopeo, docker-registry), as CI
has; no cluster. Each build takes about 6 s: the controller is built twice, the demo app
once, a static binary once, and one build fails on purpose (about 30 s in all)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import tarfile
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from kube import wait_for
from support import REPO, container, render

SCRIPT = REPO / "scripts" / "build-image.sh"
TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
DEBUG = TARGET / "debug"
NONROOT = 65532
VERSION = tomllib.loads((REPO / "Cargo.toml").read_text())["workspace"]["package"]["version"]
DIGEST_RE = r"^sha256:[0-9a-f]{64}$"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module", autouse=True)
def requirements():
    missing = [t for t in ("mmdebstrap", "umoci", "skopeo", "docker-registry", "jq", "unshare")
               if not shutil.which(t)]
    if missing:
        pytest.fail(f"missing {missing}: run scripts/install-platform.sh (CI does)")
    if os.geteuid() != 0:
        pytest.fail("the image tests need root (mmdebstrap's root mode, chroot); CI runs as root")
    for b in ("deployctl-controller", "demo-app"):
        if not os.access(DEBUG / b, os.X_OK):
            pytest.fail(f"{DEBUG / b} is not built: "
                        "cargo build -p deployctl-controller -p demo-app --bins")


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory(prefix="deployctl-image-test-") as d:
        yield Path(d)


def build(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    began = time.monotonic()
    out = subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env={**os.environ, **(env or {})})
    out.seconds = time.monotonic() - began
    if check:
        assert out.returncode == 0, f"build-image.sh {args} failed ({out.returncode}):\n{out.stderr}"
    return out


def digest_of(out: subprocess.CompletedProcess) -> str:
    """The output contract: the manifest digest alone on stdout's last line."""
    last = out.stdout.splitlines()[-1]
    assert re.match(DIGEST_RE, last), f"last line of stdout: {last!r}"
    return last


def blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()


def image_config(layout: Path, digest: str) -> dict:
    manifest = json.loads(blob(layout, digest))
    return json.loads(blob(layout, manifest["config"]["digest"]))


def commit_time() -> int:
    """The default SOURCE_DATE_EPOCH: the last commit's time."""
    return int(subprocess.run(["git", "log", "-1", "--format=%ct"], cwd=REPO, check=True,
                              capture_output=True, text=True).stdout)


def unpack(layout: Path, tag: str, into: Path) -> Path:
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:{tag}", str(into)], check=True,
                   capture_output=True)
    return into / "rootfs"


def run_in_image(rootfs: Path, *argv: str, writable: str | None = None) -> subprocess.CompletedProcess:
    """Runs argv in the image's root as 65532:65532 with the root read-only (as the chart's
    securityContext has it), `writable` (a directory of the image) left writable as a
    volume would be. In a private mount namespace, so the mounts end with the process.
    `chroot --userspec` leaves no supplementary group and no capability, as `setpriv
    --reuid --regid --clear-groups` would; setpriv itself cannot be used, as it would have
    to run after the chroot, in an image that has no setpriv."""
    script = 'root=$1; w=$2; shift 2; mount --bind "$root" "$root"; ' \
             '[ -z "$w" ] || mount --bind "$root$w" "$root$w"; ' \
             'mount -o remount,bind,ro "$root"; ' \
             f'exec chroot --userspec={NONROOT}:{NONROOT} "$root" "$@"'
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                           "sh", str(rootfs), writable or "", *argv],
                          capture_output=True, text=True, timeout=60)


def registry_digest(registry: str, name: str, tag: str) -> str:
    req = urllib.request.Request(f"http://{registry}/v2/{name}/manifests/{tag}",
                                 headers={"Accept": OCI_MANIFEST})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["Content-Type"] == OCI_MANIFEST
        return resp.headers["Docker-Content-Digest"]


@pytest.fixture(scope="module")
def registry(scratch):
    """docker-registry (Debian's, distribution 2.8) on a free loopback port, filesystem storage."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = scratch / "registry"
    d.mkdir()
    (d / "config.yml").write_text(
        "version: 0.1\n"
        "log: {level: warn, accesslog: {disabled: true}}\n"
        f"storage: {{filesystem: {{rootdirectory: {d / 'data'}}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n")
    log = open(d / "log", "w")
    proc = subprocess.Popen(["docker-registry", "serve", str(d / "config.yml")], stdout=log,
                            stderr=subprocess.STDOUT)

    def ready():
        if proc.poll() is not None:
            raise AssertionError(f"docker-registry exited ({proc.returncode}):\n"
                                 + (d / "log").read_text())
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    try:
        wait_for("docker-registry to answer /v2/", ready, timeout=30)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def controller(scratch, registry):
    """The controller image built twice from the same binaries into two layouts, the second
    time pushed to the registry; the first one unpacked."""
    first, second = scratch / "controller-1", scratch / "controller-2"
    a = build("--component", "controller", "--binaries", str(DEBUG), "--out", str(first))
    b = build("--component", "controller", "--binaries", str(DEBUG), "--out", str(second),
              "--push", f"{registry}/deployctl/deployctl")
    print(f"controller image builds: {a.seconds:.1f} s, {b.seconds:.1f} s with the push")
    return {"layouts": (first, second), "runs": (a, b),
            "rootfs": unpack(first, VERSION, scratch / "controller-bundle")}


@pytest.fixture(scope="module")
def demo(scratch, registry):
    """The demo app's v2 image, built the default way (cargo build --release into
    CARGO_TARGET_DIR, here a stub cargo that records its arguments and puts the debug binary
    there) and pushed under the --tag."""
    target = scratch / "demo-target"
    stubs = scratch / "stubs"
    stubs.mkdir()
    cargo = stubs / "cargo"
    cargo.write_text('#!/bin/sh\nset -eu\necho "$*" >>"$STUB_LOG"\n'
                     'mkdir -p "$CARGO_TARGET_DIR/release"\n'
                     f'cp {DEBUG / "demo-app"} "$CARGO_TARGET_DIR/release/demo-app"\n')
    cargo.chmod(0o755)
    env = {"PATH": f"{stubs}:{os.environ['PATH']}", "CARGO_TARGET_DIR": str(target),
           "STUB_LOG": str(scratch / "cargo.log")}
    out = build("--component", "demo-app", "--tag", "v2", "--env", "APP_VERSION=2",
                "--push", f"{registry}/deployctl/demo-app", env=env)
    print(f"demo-app image build: {out.seconds:.1f} s with the push")
    layout = target / "oci" / "demo-app"
    return {"run": out, "layout": layout, "cargo": (scratch / "cargo.log").read_text(),
            "rootfs": unpack(layout, "v2", scratch / "demo-bundle")}


def test_two_builds_of_the_controller_give_the_same_digest(controller):
    (first, second), (a, b) = controller["layouts"], controller["runs"]
    assert digest_of(a) == digest_of(b), "the same inputs built twice gave two images"
    for layout, run in ((first, a), (second, b)):
        assert (layout / f"{VERSION}.digest").read_text() == digest_of(run) + "\n"
        index = json.loads((layout / "index.json").read_text())
        assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]] \
            == [VERSION], "the tag defaults to the workspace version"
        assert f"layout: {layout}:{VERSION}" in run.stdout.splitlines()
    assert blob(first, digest_of(a)) == blob(second, digest_of(b))


def test_controller_config_runs_the_binary_as_nonroot(controller):
    layout, run = controller["layouts"][0], controller["runs"][0]
    config = image_config(layout, digest_of(run))
    c = config["config"]
    assert c["User"] == f"{NONROOT}:{NONROOT}"
    assert c["Entrypoint"] == ["/usr/local/bin/deployctl-controller"]
    assert not c.get("Cmd"), "the controller runs by default; the chart passes args"
    assert "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" in c["Env"]
    assert c["WorkingDir"] == "/" and c["ExposedPorts"] == {"8080/tcp": {}}
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(commit_time()))
    assert config["created"] == created, "SOURCE_DATE_EPOCH defaults to the last commit's time"
    assert {h["created"] for h in config["history"]} == {created}
    labels = c["Labels"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout.strip()
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.opencontainers.image.revision"] == head
    assert labels["org.opencontainers.image.title"] == "deployctl-controller"
    assert "libc6=" in labels["dev.deployctl.image.debian-packages"]


def test_controller_rootfs_is_distroless(controller):
    root = controller["rootfs"]
    assert not os.path.lexists(root / "bin/sh"), "no shell"
    shells = [p for p in root.rglob("*") if not p.is_dir()
              and p.name in {"sh", "bash", "dash", "busybox", "apt", "dpkg"}]
    assert not shells, shells
    assert not list((root / "usr/bin").iterdir()) and not list((root / "usr/sbin").iterdir())
    bundle = (root / "etc/ssl/certs/ca-certificates.crt").read_text()
    assert bundle.count("-----BEGIN CERTIFICATE-----") > 100, "the CA bundle is empty or cut"
    assert f"nonroot:x:{NONROOT}:{NONROOT}:" in (root / "etc/passwd").read_text()
    assert f"nonroot:x:{NONROOT}:" in (root / "etc/group").read_text()
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777
    home = (root / "home/nonroot").stat()
    assert (home.st_uid, home.st_gid) == (NONROOT, NONROOT)
    layout, run = controller["layouts"][0], controller["runs"][0]
    members = [m for layer in json.loads(blob(layout, digest_of(run)))["layers"]
               for m in tarfile.open(fileobj=io.BytesIO(blob(layout, layer["digest"])))]
    not_root = [m.name for m in members if (m.uid, m.gid) != (0, 0) and m.name != "home/nonroot"]
    assert not not_root, f"owned by someone else than root: {not_root}"
    assert {m.mtime for m in members} == {commit_time()}, "every file's time is SOURCE_DATE_EPOCH"
    # What a distroless image leaves out.
    for gone in ("usr/share/man", "usr/share/locale", "usr/lib/locale", "var/cache", "var/lib/apt",
                 "etc/apt", "usr/lib/x86_64-linux-gnu/gconv", "usr/lib/x86_64-linux-gnu/libssl.so.3"):
        assert not os.path.lexists(root / gone), gone
    assert {p.name for p in (root / "var/lib/dpkg/status.d").iterdir()} >= {"libc6", "libgcc-s1",
                                                                            "ca-certificates"}
    assert 'ID=debian' in (root / "etc/os-release").read_text()


def test_the_chart_runs_the_image_as_its_user_under_its_default_tag(controller):
    layout, run = controller["layouts"][0], controller["runs"][0]
    user = image_config(layout, digest_of(run))["config"]["User"]
    c = container(render())
    assert f"{c['securityContext']['runAsUser']}:{c['securityContext']['runAsGroup']}" == user
    # The chart's default tag (its appVersion) is the tag the script builds by default.
    assert c["image"] == f"deployctl.dev/deployctl:{VERSION}"


def test_controller_runs_in_its_rootfs_as_nonroot_with_a_read_only_root(controller):
    root = controller["rootfs"]
    out = run_in_image(root, "/usr/local/bin/deployctl-controller", "--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"deployctl-controller {VERSION}"
    # The snapshot agent is the same binary's subcommand.
    out = run_in_image(root, "/usr/local/bin/deployctl-controller", "agent", "--help")
    assert out.returncode == 0 and "snapshot" in out.stdout.lower(), out.stdout + out.stderr
    # The root really is read-only: not even the user's home can be written...
    out = run_in_image(root, "/usr/local/bin/deployctl-controller", "crdgen",
                       "--out-dir", "/home/nonroot")
    assert out.returncode != 0 and "Read-only file system" in out.stderr, out.stderr
    # ...and /tmp, a volume as in the agent's Jobs, can, by the user 65532.
    out = run_in_image(root, "/usr/local/bin/deployctl-controller", "crdgen",
                       "--out-dir", "/tmp", writable="/tmp")
    assert out.returncode == 0, out.stderr
    written = list((root / "tmp").glob("*.yaml"))
    assert written and all(p.stat().st_uid == NONROOT for p in written), written


def test_the_pushed_controller_has_the_built_digest(controller, registry):
    run = controller["runs"][1]
    digest = digest_of(run)
    assert f"pushed: {registry}/deployctl/deployctl:{VERSION}@{digest}" in run.stdout.splitlines()
    assert registry_digest(registry, "deployctl/deployctl", VERSION) == digest


def test_demo_app_image_built_the_default_way_runs_and_is_pushed(demo, controller, registry):
    run, layout, root = demo["run"], demo["layout"], demo["rootfs"]
    assert demo["cargo"].split() == ["build", "--release", "--locked", "-p", "demo-app",
                                     "--bin", "demo-app"]
    digest = digest_of(run)
    assert (layout / "v2.digest").read_text() == digest + "\n"
    c = image_config(layout, digest)["config"]
    assert c["Entrypoint"] == ["/usr/local/bin/demo-app"] and c["User"] == f"{NONROOT}:{NONROOT}"
    assert "APP_VERSION=2" in c["Env"] and c["Volumes"] == {"/data": {}}
    assert c["Labels"]["org.opencontainers.image.title"] == "demo-app"
    # The base layer is the controller's, so a registry stores it once.
    controller_layout, controller_run = controller["layouts"][0], controller["runs"][0]
    base = json.loads(blob(controller_layout, digest_of(controller_run)))["layers"][0]
    assert json.loads(blob(layout, digest))["layers"][0] == base
    # The app keeps its database on the /data volume, as the demo stack mounts it.
    out = run_in_image(root, "/usr/local/bin/demo-app", "migrate", "--data-dir", "/data",
                       writable="/data")
    assert out.returncode == 0, out.stderr
    db = (root / "data/app.db").stat()
    assert db.st_uid == NONROOT and db.st_size > 0
    assert registry_digest(registry, "deployctl/demo-app", "v2") == digest
    assert f"pushed: {registry}/deployctl/demo-app:v2@{digest}" in run.stdout.splitlines()


def test_a_static_binary_is_taken_as_it_is_with_no_strip_and_given_sources(scratch, tmp_path):
    # A static C program with debug sections, standing in for a static (musl) build.
    src = tmp_path / "hello.c"
    src.write_text('#include <stdio.h>\nint main(void) { puts("static hello"); return 0; }\n')
    bins = tmp_path / "bins"
    bins.mkdir()
    subprocess.run(["cc", "-static", "-g", "-o", str(bins / "demo-app"), str(src)], check=True)
    sources = tmp_path / "my.sources"
    shutil.copy("/etc/apt/sources.list.d/debian.sources", sources)
    layout = tmp_path / "layout"
    out = build("--component", "demo-app", "--binaries", str(bins), "--out", str(layout),
                "--no-strip", "--sources", str(sources))
    assert f"(mmdebstrap, {sources})" in out.stderr and "statically linked" in out.stderr
    root = unpack(layout, VERSION, tmp_path / "bundle")
    assert (root / "usr/local/bin/demo-app").read_bytes() == (bins / "demo-app").read_bytes(), \
        "--no-strip keeps the binary as it is, debug sections included"
    ran = run_in_image(root, "/usr/local/bin/demo-app")
    assert ran.returncode == 0 and ran.stdout == "static hello\n", ran.stderr


def test_a_binary_that_needs_a_library_the_image_lacks_fails_the_build(scratch):
    # jq links libjq and libonig, which the image does not have.
    bins = scratch / "jq-bins"
    bins.mkdir()
    shutil.copy(shutil.which("jq"), bins / "deployctl-controller")
    out_dir = scratch / "never-written"
    out = build("--component", "controller", "--binaries", str(bins), "--out", str(out_dir),
                check=False)
    assert out.returncode == 1, out.stderr
    assert "libjq.so.1 (needed by /usr/local/bin/deployctl-controller)" in out.stderr, out.stderr
    assert "sha256:" not in out.stdout
    assert not out_dir.exists(), "a failed build leaves --out as it was"


CONTROLLER = ["--component", "controller"]


@pytest.mark.parametrize("args, code, message", [
    ([], 2, "--component is required"),
    (["--component", "api"], 2, "must be controller or demo-app"),
    (CONTROLLER + ["--tag", "bad tag"], 2, "is not a valid tag"),
    (CONTROLLER + ["--env", "NOEQUALS"], 2, "is not NAME=VALUE"),
    (CONTROLLER + ["--push", "deployctl/deployctl"], 2, "must start with the registry"),
    (CONTROLLER + ["--push", "r.example/x@sha256:00"], 2, "not a digest"),
    (CONTROLLER + ["--insecure"], 2, "only applies to --push"),
    (CONTROLLER + ["--binaries", "/nonexistent"], 1,
     "no executable /nonexistent/deployctl-controller"),
    (CONTROLLER + ["--sources", "/nonexistent.sources"], 1,
     "--sources /nonexistent.sources: no such file"),
])
def test_usage_errors_say_what_is_wrong(args, code, message):
    out = build(*args, check=False)
    assert out.returncode == code and message in out.stderr, (out.returncode, out.stderr)
    assert not out.stdout


@pytest.mark.parametrize("ref, insecure, said", [
    ("registry.example.com/deployctl", False,
     f"will push to registry.example.com/deployctl:{VERSION}, TLS verified"),
    ("registry.example.com/deployctl:v9", True,
     "will push to registry.example.com/deployctl:v9, TLS not verified (--insecure)"),
    ("localhost:5000/deployctl", False, "TLS not verified (loopback registry)"),
    ("127.0.0.1:5000/deployctl", False, "TLS not verified (loopback registry)"),
    ("[::1]:5000/deployctl", False, "TLS not verified (loopback registry)"),
])
def test_tls_is_verified_unless_the_registry_is_on_loopback_or_insecure_is_given(
        tmp_path, ref, insecure, said):
    # Said before the build starts; a binaries directory without the binary stops it there.
    args = CONTROLLER + ["--binaries", str(tmp_path), "--push", ref]
    out = build(*args, *(["--insecure"] if insecure else []), check=False)
    assert out.returncode == 1 and said in out.stderr, out.stderr


def test_help_documents_the_output_contract():
    out = build("--help")
    assert "Output contract" in out.stdout and "sha256:<64 hex digits>" in out.stdout
    assert "TAG.digest" in out.stdout
