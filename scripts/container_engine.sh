#!/usr/bin/env bash
# Make a Docker-API container engine and a Lambda Python 3.13 image available
# for `sam local`, then print shell exports for them on the last line of stdout:
#
#     eval "$(scripts/container_engine.sh)"
#     # -> DOCKER_HOST and PROMPTRUN_LAMBDA_IMAGE are set
#
# * If a Docker daemon answers, it is used (public Lambda image if present or
#   pullable, otherwise a locally built one).
# * Otherwise Podman (Debian packages, runc runtime) is installed if missing,
#   configured and started as a Docker-compatible API service on
#   unix:///run/podman/podman.sock.
# * The local image localhost/lambda-python:3.13 is built once per machine from a
#   debootstrapped Debian trixie (Python 3.13) plus awslambdaric, the way AWS
#   documents alternative base images.
# * The engine's default bridge network is brought up now and kept up by a small
#   per-checkout "anchor" container: Podman (netavark) creates the bridge, its address
#   and its firewall rules when the first container starts and removes them when the
#   last one stops, so without the anchor every Lambda container would race that set-up.
#   The bridge's MAC address is then pinned: left alone, it follows the lowest MAC of the
#   bridge's ports, and containers that resolved the old one lose the host for half a
#   minute whenever another container starts. The bridge's gateway address is printed as
#   PROMPTRUN_CONTAINER_BRIDGE_ADDR, for services that containers must reach.
#
#     scripts/container_engine.sh --reach PORT   # after the above: prove that a Lambda
#         # container reaches this machine's PORT (e.g. PostgreSQL) before any test runs
#     scripts/container_engine.sh --stop-anchor  # stop this checkout's anchor container
#
# Idempotent: a second run changes nothing and takes seconds. Needs root for the
# Podman path (apt-get, /etc/containers, /run/podman). Progress goes to stderr.
#
# Environment overrides:
#   PROMPTRUN_DEBIAN_MIRROR   Debian mirror for debootstrap (default: apt's own)
#   PROMPTRUN_PODMAN_SOCKET   socket path (default /run/podman/podman.sock)
#   PROMPTRUN_FORCE_PODMAN=1  ignore a running Docker daemon
set -euo pipefail

PUBLIC_IMAGE="public.ecr.aws/lambda/python:3.13"
LOCAL_IMAGE="localhost/lambda-python:3.13"
PODMAN_SOCKET="${PROMPTRUN_PODMAN_SOCKET:-/run/podman/podman.sock}"
CONTAINERS_CONF="/etc/containers/containers.conf"
CONTAINERS_CONF_DROPIN="/etc/containers/containers.conf.d/50-promptrun.conf"
DEBIAN_SUITE="trixie" # Debian 13: python3 is 3.13
WANT_PY="3.13"
# python3-minimal lacks most of the stdlib (logging, decimal, multiprocessing,
# ...) that awslambdaric and handlers need; python3 brings libpython3.13-stdlib.
# ca-certificates so handlers can make HTTPS calls.
ROOTFS_PACKAGES="python3-minimal,python3,ca-certificates"
# Modules installed into /var/runtime, like the AWS base image (which ships boto3).
# boto3 pinned to requirements.lock's version: what the tests run is what the image runs.
RUNTIME_PIP_PACKAGES=(awslambdaric boto3==1.44.5 botocore==1.44.5 s3transfer==0.19.3)

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL_DIR="$REPO_ROOT/.local"

log() { printf 'container engine: %s\n' "$*" >&2; }
die() {
	printf 'container engine: ERROR: %s\n' "$*" >&2
	exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

# ---------------------------------------------------------------- docker path
docker_answers() {
	[[ "${PROMPTRUN_FORCE_PODMAN:-0}" == 1 ]] && return 1
	# A DOCKER_HOST that is our own Podman socket (from an earlier run's exports) is Podman.
	[[ "${DOCKER_HOST:-}" == "unix://$PODMAN_SOCKET" ]] && return 1
	have docker || return 1
	timeout 15 docker info >/dev/null 2>&1
}

docker_host_value() {
	if [[ -n "${DOCKER_HOST:-}" ]]; then
		printf '%s' "$DOCKER_HOST"
		return
	fi
	# Honour a non-default docker context if one is active.
	local h
	h="$(docker context inspect --format '{{.Endpoints.docker.Host}}' 2>/dev/null || true)"
	printf '%s' "${h:-unix:///var/run/docker.sock}"
}

# ---------------------------------------------------------------- podman path
apt_updated=0
apt_install_missing() {
	# $@: "command:package" pairs; installs the packages whose command is missing.
	local pair missing=()
	for pair in "$@"; do
		have "${pair%%:*}" || missing+=("${pair#*:}")
	done
	((${#missing[@]})) || return 0
	have apt-get || die "missing ${missing[*]} and no apt-get to install them"
	[[ $EUID -eq 0 ]] || die "missing ${missing[*]}; run as root to install them"
	log "installing ${missing[*]} (apt-get)"
	export DEBIAN_FRONTEND=noninteractive
	# Wait for another apt/dpkg run (bounded) instead of failing on the lock.
	local i
	for i in $(seq 1 120); do
		fuser /var/lib/dpkg/lock-frontend /var/lib/dpkg/lock >/dev/null 2>&1 || break
		((i == 1)) && log "waiting for another apt/dpkg process to finish"
		sleep 5
	done
	if ((apt_updated == 0)) && ! compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null; then
		log "apt package lists are empty; running apt-get update"
		apt-get update >&2 || die "apt-get update failed; cannot install ${missing[*]}"
		apt_updated=1
	fi
	if ! apt-get install -y "${missing[@]}" >&2; then
		if ((apt_updated == 0)); then
			log "apt-get install failed; running apt-get update and retrying"
			apt-get update >&2 || die "apt-get update failed; cannot install ${missing[*]}"
			apt_updated=1
			apt-get install -y "${missing[@]}" >&2 ||
				die "could not install ${missing[*]} with apt-get"
		else
			die "could not install ${missing[*]} with apt-get"
		fi
	fi
}

configure_containers_conf() {
	# crun fails on some cgroup layouts, and default ulimits above the host's hard
	# limits are refused: use runc and modest ulimits.
	local f
	local runtime_ok=0 ulimits_ok=0
	for f in "$CONTAINERS_CONF" /etc/containers/containers.conf.d/*.conf; do
		[[ -f "$f" ]] || continue
		grep -Eq '^[[:space:]]*runtime[[:space:]]*=[[:space:]]*"runc"' "$f" && runtime_ok=1
		grep -Eq '^[[:space:]]*default_ulimits[[:space:]]*=' "$f" && ulimits_ok=1
	done
	if ((runtime_ok && ulimits_ok)); then
		return 0
	fi
	[[ $EUID -eq 0 ]] || die "Podman is not configured ($CONTAINERS_CONF: runtime runc, default_ulimits); run as root"
	local content
	content="$(
		cat <<-'EOF'
			# Written by promptrun scripts/container_engine.sh
			[containers]
			default_ulimits = ["nofile=1024:1024", "nproc=1000:1000"]

			[engine]
			runtime = "runc"
		EOF
	)"
	if [[ ! -e "$CONTAINERS_CONF" ]]; then
		log "writing $CONTAINERS_CONF (runtime runc, default ulimits)"
		mkdir -p "$(dirname "$CONTAINERS_CONF")"
		printf '%s\n' "$content" >"$CONTAINERS_CONF"
	else
		# Do not rewrite someone else's file: a drop-in overrides just these keys.
		log "$CONTAINERS_CONF exists; writing drop-in $CONTAINERS_CONF_DROPIN"
		mkdir -p "$(dirname "$CONTAINERS_CONF_DROPIN")"
		printf '%s\n' "$content" >"$CONTAINERS_CONF_DROPIN"
	fi
	# A running service keeps its old configuration.
	if podman_socket_answers; then
		log "restarting the Podman service to apply the configuration"
		stop_podman_service
	fi
}

podman_socket_answers() {
	[[ -S "$PODMAN_SOCKET" ]] || return 1
	if have curl; then
		[[ "$(curl -s -m 5 --unix-socket "$PODMAN_SOCKET" http://d/_ping 2>/dev/null)" == OK ]]
	elif have docker; then
		DOCKER_HOST="unix://$PODMAN_SOCKET" timeout 10 docker version >/dev/null 2>&1
	else
		timeout 10 podman --url "unix://$PODMAN_SOCKET" version >/dev/null 2>&1
	fi
}

# The service is machine-wide and outlives the checkout that started it (CI clones into a
# folder that is deleted afterwards), so its pid file and log live beside its socket, and it
# runs from / : conmon inherits the service's working folder, and a service left in a
# deleted folder answers _ping but cannot start a single container.
SERVICE_DIR="$(dirname "$PODMAN_SOCKET")"
PID_FILE="$SERVICE_DIR/promptrun-service.pid"
SERVICE_LOG="$SERVICE_DIR/promptrun-service.log"

socket_owner_pid() {
	# The process listening on our socket, whoever started it.
	have ss || return 0
	ss -xlpn 2>/dev/null | awk -v s="$PODMAN_SOCKET" '$5 == s' |
		grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2
}

stop_podman_service() {
	local pid
	pid="$(cat "$PID_FILE" 2>/dev/null || true)"
	[[ -n "$pid" ]] || pid="$(socket_owner_pid)"
	if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
		kill "$pid" 2>/dev/null || true
		local i
		for i in $(seq 1 20); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.25
		done
	fi
	rm -f "$PID_FILE"
}

service_is_healthy() {
	# A service whose working folder was deleted cannot start containers: restart it.
	local pid cwd
	pid="$(socket_owner_pid)"
	[[ -n "$pid" ]] || return 0
	cwd="$(readlink "/proc/$pid/cwd" 2>/dev/null || true)"
	if [[ "$cwd" == *"(deleted)" ]]; then
		log "the Podman service (pid $pid) runs in a deleted folder ($cwd) and cannot start containers; restarting it"
		return 1
	fi
}

start_podman_service() {
	if podman_socket_answers; then
		if service_is_healthy; then
			log "Podman service answers on $PODMAN_SOCKET"
			return 0
		fi
		[[ $EUID -eq 0 ]] || die "the Podman service on $PODMAN_SOCKET is broken; run as root to restart it"
		stop_podman_service
	fi
	[[ $EUID -eq 0 ]] || die "no Podman service answers on $PODMAN_SOCKET; run as root to start it"
	mkdir -p "$SERVICE_DIR"
	rm -f "$PODMAN_SOCKET" # stale socket from a dead service
	log "starting podman system service on unix://$PODMAN_SOCKET (log: $SERVICE_LOG)"
	(cd / && exec nohup setsid podman system service --time=0 "unix://$PODMAN_SOCKET" \
		>>"$SERVICE_LOG" 2>&1 </dev/null) &
	echo $! >"$PID_FILE"
	local i
	for i in $(seq 1 60); do
		podman_socket_answers && {
			log "Podman service is up"
			return 0
		}
		sleep 0.5
	done
	tail -n 20 "$SERVICE_LOG" >&2 || true
	die "Podman service did not answer on $PODMAN_SOCKET within 30 s (see $SERVICE_LOG)"
}

# ---------------------------------------------------------------- image build
debian_mirror() {
	if [[ -n "${PROMPTRUN_DEBIAN_MIRROR:-}" ]]; then
		printf '%s' "$PROMPTRUN_DEBIAN_MIRROR"
		return
	fi
	# The main Debian archive apt uses here (only that registry may be reachable):
	# a URI ending in /debian, from one-line or deb822 sources.
	local uri
	uri="$(
		{
			cat /etc/apt/sources.list 2>/dev/null || true
			cat /etc/apt/sources.list.d/*.list 2>/dev/null || true
			cat /etc/apt/sources.list.d/*.sources 2>/dev/null || true
		} | sed -E 's/#.*//' | grep -Eo '(https?|file)://[^ ]+' |
			sed -E 's:/+$::' | grep -E '/debian$' | head -n 1 || true
	)"
	printf '%s' "${uri:-http://deb.debian.org/debian}"
}

apt_proxy_env() {
	# debootstrap uses wget, which honours http_proxy; mirror apt's proxy if any.
	have apt-config || return 0
	local p
	p="$(apt-config shell P Acquire::http::Proxy 2>/dev/null || true)"
	eval "$p"
	if [[ -n "${P:-}" && -z "${http_proxy:-}" ]]; then
		export http_proxy="$P"
		log "using apt's HTTP proxy for debootstrap"
	fi
	P=""
	p="$(apt-config shell P Acquire::https::Proxy 2>/dev/null || true)"
	eval "$p"
	if [[ -n "${P:-}" && -z "${https_proxy:-}" ]]; then
		export https_proxy="$P"
	fi
}

host_pip() {
	# Any CPython >= 3.8 with pip will do: the target platform is forced below.
	local py
	for py in "$REPO_ROOT/.venv/bin/python3" python3.13 python3; do
		if have "$py" && "$py" -m pip --version >/dev/null 2>&1; then
			printf '%s' "$py"
			return 0
		fi
	done
	return 1
}

BUILD_DIR=""
cleanup_build() {
	[[ -n "$BUILD_DIR" && -d "$BUILD_DIR" ]] || return 0
	# debootstrap leaves /proc and /sys mounted in the target if it fails.
	local m
	while read -r m; do
		umount -l "$m" 2>/dev/null || true
	done < <(awk -v d="$BUILD_DIR/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r)
	rm -rf --one-file-system "$BUILD_DIR"
	BUILD_DIR=""
}

build_local_image() {
	local engine="$1" # podman or docker
	[[ $EUID -eq 0 ]] || die "building $LOCAL_IMAGE needs root (debootstrap)"
	apt_install_missing debootstrap:debootstrap
	local py
	py="$(host_pip)" || die "building $LOCAL_IMAGE needs a python3 with pip on the host"
	local mirror
	mirror="$(debian_mirror)"
	apt_proxy_env

	mkdir -p "$LOCAL_DIR"
	BUILD_DIR="$(mktemp -d "$LOCAL_DIR/lambda-image-build.XXXXXX")"
	trap cleanup_build EXIT
	local rootfs="$BUILD_DIR/rootfs"
	local start=$SECONDS

	log "building $LOCAL_IMAGE: debootstrap $DEBIAN_SUITE from $mirror (about a minute)"
	if ! debootstrap --variant=minbase --include="$ROOTFS_PACKAGES" \
		"$DEBIAN_SUITE" "$rootfs" "$mirror" >"$BUILD_DIR/debootstrap.log" 2>&1; then
		tail -n 30 "$BUILD_DIR/debootstrap.log" >&2 || true
		cp "$BUILD_DIR/debootstrap.log" "$LOCAL_DIR/debootstrap-failed.log" 2>/dev/null || true
		die "debootstrap of Debian $DEBIAN_SUITE from $mirror failed (log: $LOCAL_DIR/debootstrap-failed.log)"
	fi

	local got
	got="$(chroot "$rootfs" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')" ||
		die "python3 does not run in the debootstrapped rootfs"
	[[ "$got" == "$WANT_PY" ]] ||
		die "Debian $DEBIAN_SUITE gives Python $got, not $WANT_PY"

	log "installing ${RUNTIME_PIP_PACKAGES[*]} (cp313 manylinux wheels) into /var/runtime"
	mkdir -p "$rootfs/var/runtime" "$rootfs/var/task" "$rootfs/opt/python"
	PIP_ROOT_USER_ACTION=ignore "$py" -m pip install --quiet --disable-pip-version-check --no-warn-script-location --no-warn-conflicts \
		--target "$rootfs/var/runtime" \
		--platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
		--platform manylinux1_x86_64 --implementation cp --python-version "$WANT_PY" \
		--abi cp313 --abi abi3 --abi none --only-binary=:all: \
		"${RUNTIME_PIP_PACKAGES[@]}" >&2 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2) ||
		die "pip could not install ${RUNTIME_PIP_PACKAGES[*]} for Python $WANT_PY"

	cat >"$rootfs/var/runtime/bootstrap" <<'EOF'
#!/bin/sh
# Lambda custom-runtime bootstrap: run the Python runtime interface client.
export PYTHONPATH="/var/runtime:/var/task:/opt/python${PYTHONPATH:+:$PYTHONPATH}"
exec python3 -m awslambdaric "$_HANDLER"
EOF
	chmod 0755 "$rootfs/var/runtime/bootstrap"

	# Smoke test: the runtime client (a C++ extension) and its stdlib needs load.
	chroot "$rootfs" env PYTHONPATH=/var/runtime python3 -c \
		'import awslambdaric.bootstrap, runtime_client, boto3, json, logging, decimal, multiprocessing, ssl' ||
		die "awslambdaric does not import in the built rootfs"

	# Trim caches that only bloat the image.
	rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
		"$rootfs"/usr/share/doc "$rootfs"/usr/share/man "$rootfs"/usr/share/locale

	log "importing the rootfs into $engine as $LOCAL_IMAGE"
	tar -C "$rootfs" -c . | "$engine" import \
		--change 'WORKDIR /var/task' \
		--change 'ENTRYPOINT ["/var/runtime/bootstrap"]' \
		--change "LABEL promptrun.runtime-packages=\"${RUNTIME_PIP_PACKAGES[*]}\"" \
		- "$LOCAL_IMAGE" >/dev/null ||
		die "$engine import of $LOCAL_IMAGE failed"
	cleanup_build
	trap - EXIT
	log "built $LOCAL_IMAGE in $((SECONDS - start)) s"
}

# Pick the image: public one if present, local one if present, else pull the
# public one, else build the local one.
choose_image() {
	local engine="$1"
	if "$engine" image inspect "$PUBLIC_IMAGE" >/dev/null 2>&1; then
		IMAGE="$PUBLIC_IMAGE"
	elif [[ "$("$engine" image inspect --format '{{index .Config.Labels "promptrun.runtime-packages"}}' \
		"$LOCAL_IMAGE" 2>/dev/null || true)" == "${RUNTIME_PIP_PACKAGES[*]}" ]]; then
		IMAGE="$LOCAL_IMAGE"
	elif "$engine" image inspect "$LOCAL_IMAGE" >/dev/null 2>&1; then
		log "$LOCAL_IMAGE was built with other runtime packages than ${RUNTIME_PIP_PACKAGES[*]}; rebuilding"
		build_local_image "$engine"
		IMAGE="$LOCAL_IMAGE"
	else
		log "trying to pull $PUBLIC_IMAGE"
		if timeout 300 "$engine" pull "$PUBLIC_IMAGE" >/dev/null 2>&1; then
			IMAGE="$PUBLIC_IMAGE"
		else
			log "$PUBLIC_IMAGE cannot be pulled; building $LOCAL_IMAGE locally"
			build_local_image "$engine"
			IMAGE="$LOCAL_IMAGE"
		fi
	fi
	log "Lambda image: $IMAGE"
}

# ---------------------------------------------------------------- network
# One anchor per checkout, so that two checkouts never stop each other's.
ANCHOR="promptrun-net-anchor-$(printf '%s' "$REPO_ROOT" | sha256sum | cut -c1-10)"
REACH_TIMEOUT="${PROMPTRUN_REACH_TIMEOUT:-60}"

engine_cli() {
	# Through the engine's API service, as SAM goes: a service that cannot start containers
	# fails here, not in a test (DOCKER_HOST is exported for docker).
	if [[ "$ENGINE" == podman ]]; then
		podman --remote --url "unix://$PODMAN_SOCKET" "$@"
	else
		docker "$@"
	fi
}

host_name_for_containers() {
	if [[ "$ENGINE" == podman ]]; then echo host.containers.internal; else echo host.docker.internal; fi
}

ensure_network_anchor() {
	[[ "$ENGINE" == podman ]] || return 0 # Docker's bridge is permanent
	local state
	state="$(engine_cli container inspect --format '{{.State.Running}}' "$ANCHOR" 2>/dev/null || true)"
	[[ "$state" == true ]] && return 0
	[[ -n "$state" ]] && engine_cli rm -f "$ANCHOR" >/dev/null 2>&1
	log "bringing up the container network (anchor container $ANCHOR)"
	engine_cli run -d --name "$ANCHOR" --label "promptrun.checkout=$REPO_ROOT" \
		--entrypoint sleep "$IMAGE" infinity >/dev/null ||
		die "could not start the network anchor container $ANCHOR from $IMAGE"
}

bridge_device() {
	# The host-side interface of the engine's default network (podman0, docker0).
	if [[ "$ENGINE" == podman ]]; then
		podman network inspect podman --format '{{.NetworkInterface}}' 2>/dev/null
	else
		docker network inspect bridge --format '{{index .Options "com.docker.network.bridge.name"}}' 2>/dev/null
	fi
}

pin_bridge_address() {
	# A Linux bridge whose MAC address was never set takes the lowest MAC of its ports, so
	# it changes whenever a container (or a build's RUN step) joins or leaves. A container
	# that had already resolved the gateway keeps sending to the old address, which the
	# bridge now drops as "other host": its connections to this machine time out until its
	# ARP entry expires (half a minute or more). Docker sets its bridge's address once;
	# netavark 1.4 does not, so pin it here, while the anchor keeps the bridge up.
	[[ "$ENGINE" == podman ]] || return 0
	local dev sys
	dev="$(bridge_device)"
	sys="/sys/class/net/$dev"
	[[ -n "$dev" && -e "$sys" ]] || die "the Podman network's bridge interface (${dev:-unknown}) does not exist"
	# addr_assign_type 3 (NET_ADDR_SET): the address was set, the bridge no longer changes it.
	[[ "$(cat "$sys/addr_assign_type")" == 3 ]] && return 0
	[[ $EUID -eq 0 ]] || die "the bridge $dev changes its MAC address as containers come and go; run as root to pin it"
	have ip || die "the ip command (iproute2) is needed to pin the MAC address of the bridge $dev"
	local mac
	mac="$(cat "$sys/address")"
	ip link set dev "$dev" address "$mac" || die "could not pin the MAC address of the bridge $dev"
	[[ "$(cat "$sys/addr_assign_type")" == 3 ]] ||
		die "the MAC address of the bridge $dev is still not fixed after setting it"
	log "pinned the bridge $dev to its MAC address $mac (it would follow its ports' otherwise)"
}

bridge_gateway() {
	local gw=""
	if [[ "$ENGINE" == podman ]]; then
		gw="$(podman network inspect podman --format '{{range .Subnets}}{{.Gateway}} {{end}}' 2>/dev/null | awk '{print $1}')"
	else
		gw="$(docker network inspect bridge --format '{{range .IPAM.Config}}{{.Gateway}} {{end}}' 2>/dev/null | awk '{print $1}')"
	fi
	printf '%s' "$gw"
}

reach() {
	# A throwaway container of the Lambda image connects to PORT on this machine under
	# the name Lambda containers use; bounded, and it says how long the path took.
	local port="$1" host
	host="$(host_name_for_containers)"
	# Like SAM's containers: through the API service, with a port published on loopback.
	local extra=(--publish "127.0.0.1::8080")
	[[ "$ENGINE" == docker ]] && extra+=(--add-host "host.docker.internal:host-gateway")
	log "checking that a Lambda container reaches $host:$port"
	local out
	if ! out="$(engine_cli run --rm "${extra[@]}" --entrypoint python3 "$IMAGE" -c '
import socket, sys, time
host, port, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
start = time.monotonic()
last = None
while time.monotonic() - start < limit:
    try:
        socket.create_connection((host, port), timeout=2).close()
        print("%.1f" % (time.monotonic() - start)); sys.exit(0)
    except OSError as exc:
        last = exc
        time.sleep(0.25)
print("%s:%d unreachable for %.0f s: %s" % (host, port, limit, last)); sys.exit(1)
' "$host" "$port" "$REACH_TIMEOUT" 2>&1)"; then
		die "a Lambda container cannot reach this machine's port $port as $host: ${out##*$'\n'}
  (is the service listening on the container bridge address $(bridge_gateway)?)"
	fi
	log "a Lambda container reached $host:$port after ${out##*$'\n'} s"
}

# ---------------------------------------------------------------- main
IMAGE=""
ENGINE=""
MODE="setup"
REACH_PORT=""
case "${1:-}" in
"") ;;
--reach)
	MODE="reach"
	REACH_PORT="${2:-}"
	[[ "$REACH_PORT" =~ ^[0-9]+$ ]] || die "usage: $0 --reach PORT"
	;;
--stop-anchor) MODE="stop-anchor" ;;
*) die "unknown argument ${1}; usage: $0 [--reach PORT | --stop-anchor]" ;;
esac

if [[ "$MODE" == stop-anchor ]]; then
	# Only ever this checkout's own container, by its name.
	if have podman && podman container exists "$ANCHOR" 2>/dev/null; then
		podman rm -f -t 0 "$ANCHOR" >/dev/null 2>&1 || true
		log "stopped the network anchor $ANCHOR"
	fi
	exit 0
fi

if docker_answers; then
	HOST="$(docker_host_value)"
	log "a Docker daemon answers ($HOST)"
	choose_image docker
else
	log "no Docker daemon answers; using Podman"
	if [[ $EUID -ne 0 ]] && ! have podman; then
		die "no Docker daemon answers and podman is not installed (run as root to install podman, runc and debootstrap)"
	fi
	apt_install_missing podman:podman runc:runc
	configure_containers_conf
	start_podman_service
	HOST="unix://$PODMAN_SOCKET"
	choose_image podman
fi
export DOCKER_HOST="$HOST"
ENGINE=podman
[[ "$HOST" == "unix://$PODMAN_SOCKET" ]] || ENGINE=docker

ensure_network_anchor
pin_bridge_address
if [[ "$MODE" == reach ]]; then
	reach "$REACH_PORT"
	exit 0
fi
BRIDGE="$(bridge_gateway)"
[[ -n "$BRIDGE" ]] || die "could not read the gateway address of the $ENGINE default network"
log "containers reach this machine through $BRIDGE ($(host_name_for_containers))"

printf 'export DOCKER_HOST=%q; export PROMPTRUN_LAMBDA_IMAGE=%q; export PROMPTRUN_CONTAINER_BRIDGE_ADDR=%q\n' \
	"$HOST" "$IMAGE" "$BRIDGE"
