#!/usr/bin/env bash
# Idempotent installer used by both README commands.
# Installs what is missing (apt, pip), installs the project, configures Podman
# for the CNI backend and installs the `flatnet` CNI plugin and network.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
here=$(cd "$(dirname "$0")/.." && pwd)
log() { printf '[install] %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { echo "install.sh must run as root (it installs packages and configures Podman)" >&2; exit 1; }

APT_PKGS=(podman runc iproute2 iptables libsodium-dev busybox-static iperf3 ethtool tcpdump
          containernetworking-plugins nebula wireguard-go wireguard-tools iputils-ping
          nginx libnginx-mod-http-lua lua-resty-core lua-cjson luajit2 wrk openssl chromium prometheus procps psmisc gcc libc6-dev)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt: installing ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts nginx on install; Flatnet runs its own nginx instances.
  systemctl disable --now nginx prometheus >/dev/null 2>&1 || true
fi

PY=${PYTHON:-$(command -v python3)}
PY=$("$PY" -c 'import sys; print(sys.executable)')
log "python: $PY"
PIP_PKGS=(pynacl uvloop pyroute2 cffi msgpack dnspython pytest hypothesis noiseprotocol prometheus-client matplotlib setuptools wheel)
if ! "$PY" - "${PIP_PKGS[@]}" <<'PYEOF' 2>/dev/null
import sys, importlib.metadata as m
for p in sys.argv[1:]:
    m.version(p)
PYEOF
then
  log "pip: installing ${PIP_PKGS[*]}"
  "$PY" -m pip install -q --disable-pip-version-check "${PIP_PKGS[@]}"
fi

log "pip: installing flatnet from $here"
"$PY" -m pip install -q --disable-pip-version-check --no-build-isolation -e "$here"
# The editable install builds the cffi extension in place; build again so a
# changed C source is never stale.
"$PY" "$here/engine/crypto/_build.py" >/dev/null

# The gateway's nginx workers read the engine's control socket through this group.
getent group flatnet >/dev/null || groupadd --system flatnet

# Podman: CNI backend, runc, ulimits within this host's hard limits.
mkdir -p /etc/containers
"$PY" -m cni.install_podman --containers-conf /etc/containers/containers.conf \
   --plugin-dir /usr/lib/cni --python "$PY" --repo "$here"
command -v pyenv >/dev/null 2>&1 && pyenv rehash >/dev/null 2>&1 || true  # console scripts on PATH
log "done"
