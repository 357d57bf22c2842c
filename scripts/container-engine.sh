#!/usr/bin/env bash
# A Docker engine for building and running the project image on a machine without a service
# manager, a bridge network or a container registry (Debian 12, root): dockerd without a
# bridge, and a Python base image built locally with debootstrap (docs/operations.md).
#
#   scripts/container-engine.sh start    install docker.io + debootstrap if missing, start dockerd
#   scripts/container-engine.sh stop     stop the dockerd that `start` started (its PID only)
#   scripts/container-engine.sh base     build the local TEST base image (Python 3.11, bookworm)
#   scripts/container-engine.sh docker   print the path of a docker client that does BuildKit
#   scripts/container-engine.sh status   daemon, client, images and disk use
#
# Then, from the repository root:
#   DOCKER_BUILDKIT=1 "$(scripts/container-engine.sh docker)" build --network host \
#       -f docker/Dockerfile --build-arg BASE_IMAGE=local/python:3.11-bookworm -t fashion-attr:dev .
#   docker run --rm --network none fashion-attr:dev python -m fashion_attr.steps.train_gan --help
#
# No bridge network, ever: dockerd runs with --bridge=none, builds use --network host and
# containers --network none or host.
#
# Settings (environment):
#   ENGINE_DATA_ROOT   images, layers, build cache   (default /var/lib/docker)
#   ENGINE_EXEC_ROOT   dockerd's exec root           (default /var/run/docker)
#   ENGINE_SOCKET      API socket                    (default /var/run/docker.sock; another path
#                      needs DOCKER_HOST=unix://PATH for every client, kfp's DockerRunner too)
#   ENGINE_STATE_DIR   PID file and log of the dockerd started here (default /var/lib/fashion-attr-engine)
#   ENGINE_START_TIMEOUT  seconds to wait for `docker info` (default 60)
#   BASE_TAG           tag of the test base (default local/python:3.11-bookworm)
#   ROOTFS_TAG         tag of the imported debootstrap rootfs (default local/debian:bookworm)
#   SUITE              Debian suite of the base (default bookworm: its python3 is 3.11)
#   MIRROR             Debian mirror for debootstrap (default: the first one apt is configured
#                      with, read from $APT_ETC/sources.list.d/*.sources, then *.list files)
#   APT_ETC            apt's configuration folder (default /etc/apt)
#   FORCE=1            `base` rebuilds even if the tags exist
set -euo pipefail

ENGINE_DATA_ROOT=${ENGINE_DATA_ROOT:-/var/lib/docker}
ENGINE_EXEC_ROOT=${ENGINE_EXEC_ROOT:-/var/run/docker}
ENGINE_SOCKET=${ENGINE_SOCKET:-/var/run/docker.sock}
ENGINE_STATE_DIR=${ENGINE_STATE_DIR:-/var/lib/fashion-attr-engine}
ENGINE_START_TIMEOUT=${ENGINE_START_TIMEOUT:-60}
BASE_TAG=${BASE_TAG:-local/python:3.11-bookworm}
ROOTFS_TAG=${ROOTFS_TAG:-local/debian:bookworm}
SUITE=${SUITE:-bookworm}
FORCE=${FORCE:-0}
APT_ETC=${APT_ETC:-/etc/apt}

PID_FILE="$ENGINE_STATE_DIR/dockerd.pid"
LOG_FILE="$ENGINE_STATE_DIR/dockerd.log"
DOCKERD_PIDFILE="$ENGINE_STATE_DIR/dockerd.own.pid" # dockerd's own --pidfile
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BASE_DOCKERFILE="$REPO_ROOT/docker/base.Dockerfile"

say() { printf 'container-engine: %s\n' "$*"; }
die() {
    printf 'container-engine: error: %s\n' "$*" >&2
    exit 1
}

need_root() {
    [[ $(id -u) -eq 0 ]] || die "$1 needs root (dockerd, apt-get and debootstrap do)"
}

# ------------------------------------------------------------------------------ the client

# A client that builds with BuildKit: a 20.10 client has it built in (DOCKER_BUILDKIT=1); newer
# ones (23+) only through the buildx plugin, without which their legacy builder rejects
# RUN --mount. Debian's /usr/bin/docker (20.10) first, then whatever is on PATH.
client_ok() {
    local candidate=$1 version major
    [[ -x $candidate ]] || return 1
    version=$("$candidate" --version 2>/dev/null) || return 1 # "Docker version 20.10.24+dfsg1, build ..."
    version=${version#Docker version }
    major=${version%%.*}
    [[ $major =~ ^[0-9]+$ ]] || return 1
    if ((major < 23)); then
        return 0
    fi
    "$candidate" buildx version >/dev/null 2>&1
}

find_client() {
    local candidate
    local -a candidates=(/usr/bin/docker)
    local IFS=:
    for dir in $PATH; do
        candidates+=("$dir/docker")
    done
    unset IFS
    for candidate in "${candidates[@]}"; do
        if client_ok "$candidate"; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    return 1
}

client() {
    local found
    found=$(find_client) || die "no docker client with BuildKit support: install Debian's docker.io \
(scripts/container-engine.sh start does) or the buildx plugin for the client on PATH"
    printf '%s\n' "$found"
}

# Any client talks to the daemon (info, images, import); only builds need BuildKit, so dk
# prefers the BuildKit-capable one and falls back to the first docker on PATH.
any_client() {
    find_client || command -v docker
}

dk() {
    local c
    c=$(any_client) || die "no docker client installed: run $0 start first"
    DOCKER_HOST="unix://$ENGINE_SOCKET" "$c" "$@"
}

engine_answers() {
    local c
    c=$(any_client) || return 1
    DOCKER_HOST="unix://$ENGINE_SOCKET" "$c" info >/dev/null 2>&1
}

# ------------------------------------------------------------------------------ the daemon

our_pid() {
    # The PID recorded by `start`, if that process is still a dockerd; nothing otherwise.
    local pid
    [[ -f $PID_FILE ]] || return 1
    pid=$(<"$PID_FILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'dockerd' || return 1
    printf '%s\n' "$pid"
}

install_packages() {
    local -a missing=()
    command -v debootstrap >/dev/null 2>&1 || [[ -x /usr/sbin/debootstrap ]] || missing+=(debootstrap)
    [[ -x /usr/sbin/dockerd && -x /usr/bin/docker ]] || missing+=(docker.io)
    ((${#missing[@]})) || return 0
    need_root "installing ${missing[*]}"
    say "installing ${missing[*]} (apt-get)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"; then
        say "apt-get install failed; updating the package lists and trying once more"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    fi
}

cmd_start() {
    local pid waited=0
    if pid=$(our_pid); then
        if engine_answers; then
            say "dockerd already running (PID $pid, socket $ENGINE_SOCKET)"
            find_client >/dev/null || install_packages
            return 0
        fi
    fi
    if engine_answers; then
        say "a Docker engine already answers on $ENGINE_SOCKET but was not started by this script; using it"
        # Builds still need a BuildKit client (a bare 23+ client on PATH has no builder for
        # RUN --mount): Debian's docker.io brings one.
        find_client >/dev/null || install_packages
        return 0
    fi
    need_root "start"
    install_packages
    mkdir -p "$ENGINE_STATE_DIR" "$ENGINE_DATA_ROOT" "$ENGINE_EXEC_ROOT" "$(dirname "$ENGINE_SOCKET")"
    if [[ -S $ENGINE_SOCKET ]] && ! engine_answers; then
        say "removing the stale socket $ENGINE_SOCKET (nothing answers on it)"
        rm -f "$ENGINE_SOCKET"
    fi
    say "starting dockerd (data-root $ENGINE_DATA_ROOT, socket $ENGINE_SOCKET, log $LOG_FILE)"
    # setsid: its own session, so that the caller's shell ending (or a signal to its process
    # group) does not take the daemon with it. In a non-interactive shell the background child
    # is no group leader, so setsid execs dockerd in place and $! is dockerd's PID.
    setsid /usr/sbin/dockerd \
        --bridge=none --iptables=false --ip6tables=false --ip-masq=false --userland-proxy=false \
        --data-root "$ENGINE_DATA_ROOT" --exec-root "$ENGINE_EXEC_ROOT" \
        --pidfile "$DOCKERD_PIDFILE" --host "unix://$ENGINE_SOCKET" \
        </dev/null >>"$LOG_FILE" 2>&1 &
    pid=$!
    echo "$pid" >"$PID_FILE"
    until engine_answers; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PID_FILE"
            die "dockerd exited during start-up; see $LOG_FILE (last lines: $(tail -n 5 "$LOG_FILE" | tr '\n' ' '))"
        fi
        if ((waited >= ENGINE_START_TIMEOUT)); then
            die "dockerd (PID $pid) did not answer within ${ENGINE_START_TIMEOUT}s; see $LOG_FILE; \
stop it with: $0 stop"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    if [[ -f $DOCKERD_PIDFILE && $(<"$DOCKERD_PIDFILE") != "$pid" ]]; then
        # setsid forked after all: record the daemon's own PID, the one to stop.
        pid=$(<"$DOCKERD_PIDFILE")
        echo "$pid" >"$PID_FILE"
    fi
    say "dockerd ready (PID $pid in $PID_FILE, $(dk version --format 'server {{.Server.Version}}'), \
storage driver $(dk info --format '{{.Driver}}'))"
}

cmd_stop() {
    local pid waited=0
    if ! pid=$(our_pid); then
        rm -f "$PID_FILE"
        if engine_answers; then
            say "the engine on $ENGINE_SOCKET was not started by this script (no live PID in $PID_FILE): left running"
        else
            say "not running (no live dockerd PID in $PID_FILE)"
        fi
        return 0
    fi
    say "stopping dockerd (PID $pid)"
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do
        if ((waited >= 60)); then
            die "dockerd (PID $pid) still runs 60 s after SIGTERM; see $LOG_FILE"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    rm -f "$PID_FILE"
    say "dockerd stopped after ${waited}s; images stay in $ENGINE_DATA_ROOT"
}

# ------------------------------------------------------------------------------ the test base

# The first Debian mirror apt uses on this host: deb822 .sources files first, then
# sources.list; security and other per-suite archives (debian-security) are skipped.
apt_mirror() {
    local file uri
    for file in "$APT_ETC"/sources.list.d/*.sources; do
        [[ -f $file ]] || continue
        uri=$(awk '
            /^[[:space:]]*$/ { if (deb && uri != "" && uri !~ /security/) { print uri; exit } deb = 0; uri = ""; next }
            /^Types:/ { deb = ($0 ~ /[[:space:]]deb([[:space:]]|$)/) }
            /^URIs:/ { uri = $2 }
            END { if (deb && uri != "" && uri !~ /security/) print uri }
        ' "$file" | head -n 1)
        if [[ -n $uri ]]; then
            printf '%s\n' "$uri"
            return 0
        fi
    done
    for file in "$APT_ETC"/sources.list "$APT_ETC"/sources.list.d/*.list; do
        [[ -f $file ]] || continue
        uri=$(awk '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($i !~ /security/) { print $i; exit }
            }
        ' "$file")
        if [[ -n $uri ]]; then
            printf '%s\n' "$uri"
            return 0
        fi
    done
    return 1
}

image_exists() {
    dk image inspect "$1" >/dev/null 2>&1
}

# The host's pip TLS setting (cert), as pip resolves it: PIP_CERT, then the config files.
host_pip_cert() {
    local cert=${PIP_CERT:-}
    if [[ -z $cert ]] && command -v pip >/dev/null 2>&1; then
        cert=$(pip config get global.cert 2>/dev/null || true)
    fi
    printf '%s\n' "${cert:-/etc/ssl/certs/ca-certificates.crt}"
}

cmd_base() {
    local mirror work start cert
    engine_answers || die "no engine answers on $ENGINE_SOCKET: run $0 start first"
    if [[ $FORCE != 1 ]] && image_exists "$BASE_TAG"; then
        say "$BASE_TAG exists: nothing to do (FORCE=1 rebuilds it)"
        return 0
    fi
    need_root "base"
    install_packages
    [[ -f $BASE_DOCKERFILE ]] || die "$BASE_DOCKERFILE is missing"
    work=$(mktemp -d /var/tmp/container-engine-base.XXXXXX)
    # shellcheck disable=SC2064 # expand $work now
    trap "rm -rf '$work'" EXIT
    start=$SECONDS
    if [[ $FORCE == 1 ]] || ! image_exists "$ROOTFS_TAG"; then
        mirror=${MIRROR:-$(apt_mirror)} || true
        [[ -n ${mirror:-} ]] || die "no Debian mirror found in $APT_ETC/sources.list.d/*.sources \
or $APT_ETC/sources.list; set MIRROR=http://..."
        say "debootstrap --variant=minbase $SUITE from $mirror"
        debootstrap --variant=minbase "$SUITE" "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
            die "debootstrap failed; last lines: $(tail -n 20 "$work/debootstrap.log")"
        # The downloaded .debs and package lists: 80 MB that the base's apt-get update renews.
        find "$work/rootfs/var/cache/apt/archives" "$work/rootfs/var/lib/apt/lists" \
            -maxdepth 1 -type f \( -name '*.deb' -o -name '*_Packages' -o -name '*Release*' \) -delete
        tar -C "$work/rootfs" --numeric-owner -c . | dk import - "$ROOTFS_TAG" >/dev/null
        rm -rf "$work/rootfs"
        say "imported $ROOTFS_TAG ($((SECONDS - start))s)"
    else
        say "$ROOTFS_TAG exists: reusing it"
    fi
    mkdir -p "$work/context/ca-certificates"
    if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$work/context/ca-certificates/"
    fi
    # pip.conf: the TLS setting only (cert), the path inside the image where
    # update-ca-certificates writes the bundle that then includes the host's local CAs.
    # The host's other pip settings (local find-links, indexes, constraints) stay out.
    cert=$(host_pip_cert)
    if [[ $cert != /etc/ssl/certs/ca-certificates.crt ]]; then
        say "host pip cert is $cert; the image uses its own bundle /etc/ssl/certs/ca-certificates.crt (with the same local CAs)"
    fi
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$work/context/pip.conf"
    say "building $BASE_TAG from $ROOTFS_TAG with $(find "$work/context/ca-certificates" -name '*.crt' | wc -l) local CA certificate(s)"
    DOCKER_BUILDKIT=1 DOCKER_HOST="unix://$ENGINE_SOCKET" "$(client)" build --network host -f "$BASE_DOCKERFILE" \
        --build-arg "ROOTFS_IMAGE=$ROOTFS_TAG" -t "$BASE_TAG" "$work/context"
    say "built $BASE_TAG in $((SECONDS - start))s ($(dk image inspect -f '{{.Size}}' "$BASE_TAG") bytes)"
}

# ------------------------------------------------------------------------------ status

cmd_status() {
    local pid c
    if c=$(find_client); then
        say "BuildKit-capable client: $c ($("$c" --version))"
    else
        say "no BuildKit-capable docker client installed"
    fi
    if pid=$(our_pid); then
        say "dockerd started by this script: PID $pid (log $LOG_FILE)"
    else
        say "no dockerd started by this script is running"
    fi
    if engine_answers; then
        say "engine answers on $ENGINE_SOCKET: $(dk info --format 'server {{.ServerVersion}}, driver {{.Driver}}, data-root {{.DockerRootDir}}')"
        dk image ls
        dk system df
    else
        say "no engine answers on $ENGINE_SOCKET"
    fi
    if [[ -d $ENGINE_DATA_ROOT ]]; then
        say "data-root disk use: $(du -sh "$ENGINE_DATA_ROOT" 2>/dev/null | cut -f1) in $ENGINE_DATA_ROOT"
    fi
}

usage() {
    sed -n '2,/^set -euo pipefail/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

main() {
    local sub=${1:-}
    case $sub in
    start) cmd_start ;;
    stop) cmd_stop ;;
    base) cmd_base ;;
    docker) client ;;
    status) cmd_status ;;
    -h | --help | help) usage ;;
    "")
        usage >&2
        exit 2
        ;;
    *) die "unknown subcommand: $sub (start, stop, base, docker, status; $0 help)" ;;
    esac
}

# Sourcing the file (tests) defines the functions without running anything.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
