#!/usr/bin/env bash
# Builds the OCI image of a deployctl component (the controller, which is also the snapshot
# agent, or the demo app) reproducibly, from Debian packages and with no container engine
# and no base image pulled: mmdebstrap extracts libc6, libgcc-s1, ca-certificates and
# base-files from the Debian mirror, the script keeps what a distroless image keeps, and
# umoci writes the OCI layout. Run `scripts/build-image.sh --help` for the usage and the
# output contract; docs/image.md for building, pushing and pinning the image.
set -euo pipefail
umask 022
export LC_ALL=C

REPO=$(cd "$(dirname "$0")/.." && pwd)
SUITE=bookworm
ARCH=amd64
MULTIARCH=x86_64-linux-gnu
# What the base layer is made of. Their dependencies are downloaded too (openssl, libssl3,
# debconf come with ca-certificates) but only these packages' files are kept, and of
# libc6 and libgcc-s1 only the shared libraries.
BASE_PACKAGES=(libc6 libgcc-s1 ca-certificates base-files)
LIB_PACKAGES=(libc6 libgcc-s1)
NONROOT=65532
CERT_BUNDLE=/etc/ssl/certs/ca-certificates.crt
IMAGE_PATH=/usr/local/bin:/usr/bin:/bin

usage() {
  cat <<EOF
Usage: scripts/build-image.sh --component controller|demo-app [options]

Builds the OCI image of one deployctl component into an OCI image layout, reproducibly:
the same binaries, SOURCE_DATE_EPOCH, options and Debian package versions give the same
manifest digest, byte for byte, on any machine.

  controller   /usr/local/bin/deployctl-controller (also the snapshot agent: its
               \`agent\` subcommand); the chart's image.repository (deployctl.dev/deployctl)
  demo-app     /usr/local/bin/demo-app, the demo stack's app; /data is its volume

Options:
  --component NAME   controller or demo-app (required)
  --binaries DIR     take the binary from DIR (not modified; a stripped copy goes in the
                     image): x86-64, linked against glibc (every library it needs must be
                     in the image, checked) or static.
                     Default: \${CARGO_TARGET_DIR:-target}/release, built first with
                     \`cargo build --release --locked -p PACKAGE --bin BINARY\`
  --out DIR          the OCI image layout to write (created if missing; other tags in it
                     are kept). Default: \${CARGO_TARGET_DIR:-target}/oci/COMPONENT
  --tag TAG          the tag in the layout (and in --push when REF has none).
                     Default: the workspace version in Cargo.toml
  --env NAME=VALUE   an extra environment variable in the image config; repeatable
                     (e.g. --env APP_VERSION=2 for the demo app's v2 image)
  --no-strip         keep the binary's debug sections (default: \`objcopy --strip-debug\`,
                     symbols stay so backtraces keep function names)
  --sources FILE     apt sources for the Debian packages (deb822 or one-line format).
                     Default: /etc/apt/sources.list.d/debian.sources when it exists
                     (bookworm, bookworm-updates, bookworm-security), else mmdebstrap's
                     default (deb.debian.org with the updates and security suites)
  --push REF         after the build, copy the image to registry REF
                     (host[:port]/name[:tag]; the tag defaults to --tag) with
                     \`skopeo copy --preserve-digests\` and check that the registry's manifest
                     digest is the built one. Credentials: \`skopeo login HOST\` first (or
                     REGISTRY_AUTH_FILE)
  --insecure         with --push: plain HTTP or unverified TLS to the registry. Implied for
                     loopback registries (localhost, 127.0.0.0/8, ::1)
  -h, --help         this help

Environment:
  SOURCE_DATE_EPOCH  every timestamp in the image (file times, created, history); default:
                     the time of the last commit (\`git log -1 --format=%ct\`)
  CARGO_TARGET_DIR   where the default binaries and layout are

Output contract:
  stderr   progress and errors
  stdout   "layout: DIR:TAG", then "pushed: REF@sha256:..." with --push, then, always
           last, the image's manifest digest alone on its line: sha256:<64 hex digits>
  files    DIR (an OCI image layout, tag TAG) and DIR/TAG.digest (the digest and a newline)
  exit     0 built (and pushed); 1 failed (the message says what and what to do); 2 usage

Needs root (mmdebstrap in root mode, chroot, file ownership) and the Debian packages
mmdebstrap, umoci, skopeo (for --push), binutils and jq: scripts/install-platform.sh
installs them. The image: a merged-/usr root with glibc's shared libraries, libgcc_s, the
CA bundle (${CERT_BUNDLE}), /etc/passwd and /etc/group with root and nonroot
(${NONROOT}), no shell and no package manager; user ${NONROOT}:${NONROOT}; nothing is written
outside /tmp (and the demo app's /data volume), so it runs with a read-only root.
EOF
}

die() { printf 'build-image: %s\n' "$*" >&2; exit 1; }
usage_error() { printf 'build-image: %s\n(see scripts/build-image.sh --help)\n' "$*" >&2; exit 2; }
say() { printf '[build-image] %s\n' "$*" >&2; }

component="" binaries="" out="" tag="" strip=1 push_ref="" insecure=0
sources=""
extra_env=()
while [ $# -gt 0 ]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --component | --binaries | --out | --tag | --env | --sources | --push)
      [ $# -ge 2 ] || usage_error "$1 needs a value"
      case $1 in
        --component) component=$2 ;;
        --binaries) binaries=$2 ;;
        --out) out=$2 ;;
        --tag) tag=$2 ;;
        --env) extra_env+=("$2") ;;
        --sources) sources=$2 ;;
        --push) push_ref=$2 ;;
      esac
      shift 2 ;;
    --no-strip) strip=0; shift ;;
    --insecure) insecure=1; shift ;;
    *) usage_error "unknown argument: $1" ;;
  esac
done

case $component in
  controller) package=deployctl-controller bin=deployctl-controller crate_dir=controller ;;
  demo-app) package=demo-app bin=demo-app crate_dir=demo ;;
  "") usage_error "--component is required (controller or demo-app)" ;;
  *) usage_error "--component must be controller or demo-app, not '$component'" ;;
esac

# The value of KEY in the [SECTION] table of a Cargo.toml (a plain string value).
toml_value() {
  awk -v section="[$2]" -v key="$3" '
    /^\[/ { in_section = ($0 == section) }
    in_section && $1 == key && $2 == "=" { sub(/^[^=]*=[ \t]*"/, ""); sub(/".*$/, ""); print; exit }
  ' "$1"
}
version=$(toml_value "$REPO/Cargo.toml" workspace.package version)
[ -n "$version" ] || die "no [workspace.package] version in $REPO/Cargo.toml"
tag=${tag:-$version}
# The OCI distribution spec's tag grammar.
[[ $tag =~ ^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$ ]] || usage_error "--tag '$tag' is not a valid tag ([A-Za-z0-9_][A-Za-z0-9._-]{0,127})"
for e in "${extra_env[@]}"; do
  [[ $e =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || usage_error "--env '$e' is not NAME=VALUE"
done
if [ -n "$push_ref" ]; then
  [[ $push_ref != *@* ]] || usage_error "--push REF takes a tag, not a digest: $push_ref"
  push_host=${push_ref%%/*}
  # As docker references read it: without a dot, a port or "localhost" the first part would
  # be a Docker Hub namespace, and the image would go somewhere else than meant.
  if [[ $push_ref != */* ]] || ! [[ $push_host == *.* || $push_host == *:* || $push_host == localhost ]]; then
    usage_error "--push REF must start with the registry: host[:port]/name[:tag], not '$push_ref'"
  fi
  last=${push_ref##*/}
  [[ $last == *:* ]] || push_ref="$push_ref:$tag"
  push_host_name=$push_host
  if [[ $push_host_name == \[*\]* ]]; then
    push_host_name=${push_host_name#[}
    push_host_name=${push_host_name%%]*}
  elif [[ $push_host_name != *:*:* ]]; then  # not a bare IPv6 address: drop the port
    push_host_name=${push_host_name%%:*}
  fi
  # TLS is verified unless asked otherwise or the registry is on this machine's loopback,
  # where a test or CI registry speaks plain HTTP.
  case $push_host_name in
    localhost | ::1 | 127.*) push_tls="not verified (loopback registry)" ;;
    *) if [ "$insecure" = 1 ]; then push_tls="not verified (--insecure)"; else push_tls="verified"; fi ;;
  esac
  say "will push to $push_ref, TLS $push_tls"
elif [ "$insecure" = 1 ]; then
  usage_error "--insecure only applies to --push"
fi

[ "$(id -u)" = 0 ] || die "must run as root: mmdebstrap's root mode, chroot and root-owned files need it (CI runs as root; on a workstation: sudo)"
tools=(mmdebstrap umoci objcopy readelf jq chroot dpkg-deb sha256sum)
[ -z "$push_ref" ] || tools+=(skopeo)
for t in "${tools[@]}"; do
  command -v "$t" >/dev/null || die "$t not found: run scripts/install-platform.sh (Debian packages mmdebstrap, umoci, skopeo, binutils, jq)"
done

if [ -z "$sources" ] && [ -f /etc/apt/sources.list.d/debian.sources ]; then
  sources=/etc/apt/sources.list.d/debian.sources
fi
[ -z "$sources" ] || [ -f "$sources" ] || die "--sources $sources: no such file"

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git -C "$REPO" log -1 --format=%ct 2>/dev/null) \
    || die "SOURCE_DATE_EPOCH is not set and $REPO is not a git checkout: set it (seconds since 1970) to fix the image's timestamps"
fi
[[ $SOURCE_DATE_EPOCH =~ ^[0-9]+$ ]] || die "SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH is not a number of seconds"
created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
revision=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || true)
if [ -n "$revision" ] && [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  say "warning: the checkout has uncommitted changes; the revision label names HEAD, $revision"
fi

target_dir=${CARGO_TARGET_DIR:-$REPO/target}
if [ -z "$binaries" ]; then
  binaries="$target_dir/release"
  say "building $bin (cargo build --release --locked -p $package --bin $bin)"
  (cd "$REPO" && cargo build --release --locked -p "$package" --bin "$bin") >&2 \
    || die "cargo build of $package failed"
fi
src_bin="$binaries/$bin"
{ [ -f "$src_bin" ] && [ -x "$src_bin" ]; } || die "no executable $src_bin (--binaries $binaries)"
readelf -h "$src_bin" 2>/dev/null | grep -q 'Machine:[[:space:]]*Advanced Micro Devices X86-64' \
  || die "$src_bin is not an x86-64 ELF binary; the image is linux/$ARCH"
out=${out:-$target_dir/oci/$component}
if [ -e "$out" ] && [ ! -f "$out/index.json" ] && [ -n "$(ls -A "$out")" ]; then
  die "--out $out exists and is not an OCI image layout: give an empty or new directory"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/deployctl-image-XXXXXX")
# --one-file-system: should an interrupted mmdebstrap leave a mount in its tree, rm stops
# there instead of descending into it.
trap 'rm -rf --one-file-system "$work"' EXIT
extract="$work/extract"
bundle="$work/bundle"
rootfs="$bundle/rootfs"
# The image is built in a layout of its own and goes into --out only once it is complete,
# so a failed build leaves --out as it was.
layout="$work/layout"

# --- Debian packages ----------------------------------------------------------------------
say "extracting ${BASE_PACKAGES[*]} from Debian $SUITE (mmdebstrap, ${sources:-its default mirrors})"
mirror_args=()
[ -z "$sources" ] || mirror_args=("$sources")
# extract: unpack the packages, run no maintainer script (there is no shell to run them
# in). The setup hook makes /bin, /sbin, /lib and /lib64 links into /usr as Debian 12's
# merged /usr has them (mmdebstrap runs it with the tree as $1). The downloaded .debs stay
# for their control data.
# shellcheck disable=SC2016
if ! mmdebstrap --mode=root --variant=extract --architectures="$ARCH" \
    --include="$(IFS=,; echo "${BASE_PACKAGES[*]}")" --skip=cleanup/apt/cache \
    --setup-hook='for d in bin sbin lib lib64; do ln -s "usr/$d" "$1/$d"; mkdir -p "$1/usr/$d"; done' \
    "$SUITE" "$extract" "${mirror_args[@]}" >"$work/mmdebstrap.log" 2>&1; then
  tail -n 30 "$work/mmdebstrap.log" >&2
  die "mmdebstrap failed (above); check that the mirrors in ${sources:-the default (deb.debian.org)} are reachable"
fi
declare -A deb_of=()
for deb in "$extract"/var/cache/apt/archives/*.deb; do
  deb_of[$(dpkg-deb -f "$deb" Package)]=$deb
done
# The packages whose files the image ships: the base packages and the gcc-N-base that
# libgcc-s1 depends on (it holds libgcc-s1's copyright).
kept=("${BASE_PACKAGES[@]}")
for p in "${!deb_of[@]}"; do
  if [[ $p =~ ^gcc-[0-9]+-base$ ]]; then kept+=("$p"); fi
done
mapfile -t kept < <(printf '%s\n' "${kept[@]}" | sort)
package_versions=()
for p in "${kept[@]}"; do
  if [ -z "${deb_of[$p]:-}" ]; then
    tail -n 30 "$work/mmdebstrap.log" >&2
    die "mmdebstrap did not download $p (its log above)"
  fi
  package_versions+=("$p=$(dpkg-deb -f "${deb_of[$p]}" Version)")
done
say "Debian packages: ${package_versions[*]}"

# --- the OCI layout -----------------------------------------------------------------------
umoci init --layout "$layout"
umoci new --image "$layout:$tag"
umoci unpack --image "$layout:$tag" "$bundle" >/dev/null

# Sets every file's times to SOURCE_DATE_EPOCH (links themselves, not their targets), so
# that the layer tar is the same whenever it is built.
normalise_times() {
  find "$rootfs" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
}

# Copies PATH (relative, as in the extracted tree) into the rootfs, links kept as links.
take() {
  mkdir -p "$rootfs/$(dirname "$1")"
  cp -a "$extract/$1" "$rootfs/$1"
}

# --- base layer: what a distroless image keeps --------------------------------------------
install -d -m 0755 "$rootfs"/{dev,proc,sys,etc,usr/bin,usr/sbin,usr/lib/$MULTIARCH,usr/lib64,usr/local/bin,usr/share/doc,var/lib/dpkg/status.d}
for d in bin sbin lib lib64; do ln -s "usr/$d" "$rootfs/$d"; done
install -d -m 0700 "$rootfs/root"
install -d -m 1777 "$rootfs/tmp"
install -d -m 0755 "$rootfs/home"
install -d -m 0700 -o "$NONROOT" -g "$NONROOT" "$rootfs/home/nonroot"

# The shared libraries of libc6 and libgcc-s1 (the loader, libc, libm, libgcc_s, NSS
# modules, ...), at their merged-/usr paths; gconv modules, locales and tools stay out.
for p in "${LIB_PACKAGES[@]}"; do
  while read -r f; do
    f=${f#./}
    case $f in lib/* | lib64/*) f="usr/$f" ;; esac
    case $f in
      usr/lib/$MULTIARCH/*/*) ;;
      usr/lib/$MULTIARCH/*.so* | usr/lib64/*.so*) take "$f" ;;
    esac
  done < <(dpkg-deb --fsys-tarfile "${deb_of[$p]}" | tar -t)
done

# The CA bundle, as update-ca-certificates writes it (which extract does not run): every
# certificate of the package, in the C-locale order of their paths, each ending in a newline.
certs="$extract/usr/share/ca-certificates"
install -d -m 0755 "$rootfs/etc/ssl/certs"
find "$certs" -type f -name '*.crt' -printf '%P\n' | sort | while read -r c; do
  # shellcheck disable=SC1003 # sed's "append a newline if the last line has none"
  sed -e '$a\' "$certs/$c"
done >"$rootfs$CERT_BUNDLE"
[ -s "$rootfs$CERT_BUNDLE" ] || die "no certificate in ca-certificates' $certs"
chmod 0644 "$rootfs$CERT_BUNDLE"

# Which distribution this is (read by vulnerability scanners with the status files below).
take usr/lib/os-release
take etc/os-release
take etc/debian_version

# Per package: its copyright (licence compliance) and its control data as a dpkg status
# entry in status.d, the way distroless images list their packages for scanners.
for p in "${kept[@]}"; do
  # A doc directory may be a link to another kept package's (libgcc-s1 -> gcc-12-base).
  if [ -L "$extract/usr/share/doc/$p" ]; then
    take "usr/share/doc/$p"
  elif [ -e "$extract/usr/share/doc/$p/copyright" ]; then
    take "usr/share/doc/$p/copyright"
  fi
  dpkg-deb -f "${deb_of[$p]}" | sed '1a Status: install ok installed' \
    >"$rootfs/var/lib/dpkg/status.d/$p"
done

cat >"$rootfs/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:$NONROOT:$NONROOT:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$rootfs/etc/group" <<EOF
root:x:0:
nobody:x:65534:
nonroot:x:$NONROOT:
EOF
# glibc's default without this file asks DNS before /etc/hosts.
echo 'hosts: files dns' >"$rootfs/etc/nsswitch.conf"
chmod 0644 "$rootfs"/etc/{passwd,group,nsswitch.conf}

normalise_times
umoci repack --refresh-bundle --image "$layout:$tag" \
  --history.created "$created" --history.author "scripts/build-image.sh" \
  --history.created_by "base: Debian $SUITE ${package_versions[*]} (shared libraries, CA bundle, os-release), passwd with nonroot $NONROOT" \
  "$bundle"

# --- the component's layer ----------------------------------------------------------------
dest="$rootfs/usr/local/bin/$bin"
if [ "$strip" = 1 ]; then
  objcopy --strip-debug "$src_bin" "$dest" || die "objcopy --strip-debug $src_bin failed"
else
  cp "$src_bin" "$dest"
fi
chmod 0755 "$dest"
volumes=()
if [ "$component" = demo-app ]; then
  # The demo app's SQLite database (--data-dir default); a volume, so the root stays read-only.
  install -d -m 0755 -o "$NONROOT" -g "$NONROOT" "$rootfs/data"
  volumes=(/data)
fi

# Every library the binary needs, and those they need, must be in the image: by name in the
# loader's directories (what readelf lists as NEEDED), then as the image's own loader
# resolves them, which also catches a binary that wants a newer glibc than the image's.
resolve_in_root() {
  local root=$1 rest=${2#/} resolved="" comp target hops=0
  while [ -n "$rest" ]; do
    comp=${rest%%/*}
    if [[ $rest == */* ]]; then rest=${rest#*/}; else rest=""; fi
    case $comp in
      "" | .) continue ;;
      ..) resolved=${resolved%/*}; continue ;;
    esac
    if [ -L "$root$resolved/$comp" ]; then
      hops=$((hops + 1))
      [ "$hops" -le 40 ] || return 1
      target=$(readlink "$root$resolved/$comp")
      if [[ $target == /* ]]; then resolved=""; rest="${target#/}${rest:+/$rest}"
      else rest="$target${rest:+/$rest}"; fi
    elif [ -e "$root$resolved/$comp" ]; then
      resolved="$resolved/$comp"
    else
      return 1
    fi
  done
  printf '%s\n' "${resolved:-/}"
}
interpreter=$(readelf -l "$dest" | sed -n 's/.*Requesting program interpreter: \(.*\)]$/\1/p')
if [ -n "$interpreter" ]; then
  resolve_in_root "$rootfs" "$interpreter" >/dev/null \
    || die "$bin's loader $interpreter is not in the image"
else
  say "$bin is statically linked: no library to check"
fi
queue=("/usr/local/bin/$bin")
declare -A seen=()
missing=()
while [ ${#queue[@]} -gt 0 ]; do
  file=${queue[0]}
  queue=("${queue[@]:1}")
  while read -r lib; do
    [ -z "${seen[$lib]:-}" ] || continue
    seen[$lib]=1
    found=""
    for dir in /usr/lib/$MULTIARCH /usr/lib64 /usr/lib; do
      if found=$(resolve_in_root "$rootfs" "$dir/$lib"); then break; fi
      found=""
    done
    if [ -n "$found" ]; then queue+=("$found"); else missing+=("$lib (needed by $file)"); fi
  done < <(readelf -d "$rootfs$file" | sed -n 's/.*(NEEDED).*Shared library: \[\(.*\)\]$/\1/p')
done
if [ ${#missing[@]} -gt 0 ]; then
  die "libraries $bin needs are not in the image: ${missing[*]}. The image has only glibc and libgcc_s: link the binary without them or add their Debian packages to BASE_PACKAGES and LIB_PACKAGES in scripts/build-image.sh"
fi
if [ -n "$interpreter" ] && { ! loader_out=$(chroot "$rootfs" "$interpreter" --list "/usr/local/bin/$bin" 2>&1) \
    || grep -q 'not found' <<<"$loader_out"; }; then
  printf '%s\n' "$loader_out" >&2
  die "the image's loader cannot load $bin (above): was it built against a newer glibc than Debian $SUITE's?"
fi

normalise_times
umoci repack --refresh-bundle --image "$layout:$tag" \
  --history.created "$created" --history.author "scripts/build-image.sh" \
  --history.created_by "$component: /usr/local/bin/$bin" \
  "$bundle"

# --- configuration ------------------------------------------------------------------------
description=$(toml_value "$REPO/$crate_dir/Cargo.toml" package description)
config_args=(
  --config.user "$NONROOT:$NONROOT"
  --config.entrypoint "/usr/local/bin/$bin"
  --config.workingdir /
  --config.env "PATH=$IMAGE_PATH"
  --config.env "SSL_CERT_FILE=$CERT_BUNDLE"
  # Both listen on 8080: the controller's --metrics-addr, the demo app's --listen.
  --config.exposedports 8080/tcp
  --os linux --architecture "$ARCH" --created "$created" --author "deployctl"
  --config.label "org.opencontainers.image.title=$bin"
  --config.label "org.opencontainers.image.description=$description"
  --config.label "org.opencontainers.image.version=$version"
  --config.label "org.opencontainers.image.created=$created"
  --config.label "org.opencontainers.image.licenses=$(toml_value "$REPO/Cargo.toml" workspace.package license)"
  --config.label "org.opencontainers.image.source=$(toml_value "$REPO/Cargo.toml" workspace.package repository)"
  --config.label "dev.deployctl.image.debian-packages=${package_versions[*]}"
)
[ -z "$revision" ] || config_args+=(--config.label "org.opencontainers.image.revision=$revision")
for e in "${extra_env[@]}"; do config_args+=(--config.env "$e"); done
for v in "${volumes[@]}"; do config_args+=(--config.volume "$v"); done
umoci config --image "$layout:$tag" --no-history "${config_args[@]}"
umoci gc --layout "$layout"
# The build's own layout holds this one image.
digest=$(jq -r 'if (.manifests | length) == 1 then .manifests[0].digest else "" end' "$layout/index.json")
[[ $digest =~ ^sha256:[0-9a-f]{64}$ ]] || die "umoci wrote no manifest for tag $tag in $layout/index.json"

# Into --out: the blobs (content-addressed, so an existing one is the same), then the
# index with this tag's entry replaced, then gc drops the blobs only a replaced image used.
mkdir -p "$out/blobs/sha256"
[ -f "$out/oci-layout" ] || cp "$layout/oci-layout" "$out/"
for b in "$layout"/blobs/sha256/*; do
  [ -e "$out/blobs/sha256/${b##*/}" ] || cp "$b" "$out/blobs/sha256/"
done
if [ -f "$out/index.json" ]; then
  jq -c --arg tag "$tag" --slurpfile built "$layout/index.json" \
    '.manifests = ([.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] != $tag)]
                   + $built[0].manifests)' "$out/index.json" >"$work/index.json"
else
  cp "$layout/index.json" "$work/index.json"
fi
mv "$work/index.json" "$out/index.json"
umoci gc --layout "$out"
printf '%s\n' "$digest" >"$out/$tag.digest"
say "built $out:$tag, $(du -sh "$out/blobs" | cut -f1) of blobs"
echo "layout: $out:$tag"

# --- push ---------------------------------------------------------------------------------
if [ -n "$push_ref" ]; then
  say "pushing to $push_ref (TLS $push_tls)"
  tls=()
  [ "$push_tls" = verified ] || tls=(--dest-tls-verify=false)
  skopeo copy --quiet --preserve-digests "${tls[@]}" "oci:$out:$tag" "docker://$push_ref" >&2 \
    || die "skopeo copy to $push_ref failed (credentials: skopeo login $push_host; a registry without a trusted certificate: --insecure)"
  tls=()
  [ "$push_tls" = verified ] || tls=(--tls-verify=false)
  # The manifest's bytes as the registry serves them, hashed as they are.
  skopeo inspect --raw "${tls[@]}" "docker://$push_ref" >"$work/pushed-manifest" \
    || die "skopeo inspect $push_ref failed after the push"
  pushed="sha256:$(sha256sum <"$work/pushed-manifest" | cut -d' ' -f1)"
  [ "$pushed" = "$digest" ] \
    || die "the registry holds $push_ref as manifest $pushed, not the built $digest"
  echo "pushed: $push_ref@$digest"
fi
echo "$digest"
