#!/usr/bin/env bash
# Flatnet's installer (idempotent; run as root from a checkout):
#
#   bash scripts/install.sh [--dev] [--extras test,bench] [--gateway]
#   bash scripts/install.sh --uninstall
#
# 1. Debian packages the product needs at run time (Podman, runc, iproute2, iptables) and
#    to build its C module (gcc, libsodium-dev, libssl-dev, python3.X-dev, python3.X-venv);
#    --gateway adds nginx with the Lua module. Test and benchmark tools are not here:
#    scripts/test.sh installs them.
# 2. A virtual environment made from the system's Python (Debian's /usr/bin/python3;
#    PEP 668 forbids pip in it) at FLATNET_PREFIX (/opt/flatnet), with the runtime
#    dependencies and flatnet itself. --dev installs the checkout editable (tests and
#    the demo run the checkout's code, the C module is built in place); --extras adds
#    pyproject.toml's extras (test, bench).
# 3. `flatnet install`: command links in /usr/local/bin, the Podman drop-in
#    /etc/containers/containers.conf.d/50-flatnet.conf, the CNI plugin /usr/lib/cni/flatnet
#    running the venv's interpreter, /etc/cni/net.d/flatnet.conflist, the group flatnet.
#
# Every root can be moved (tests install into temporary folders): FLATNET_PREFIX,
# FLATNET_BIN_DIR, FLATNET_CNI_PLUGIN_DIR, FLATNET_CNI_CONF_DIR, FLATNET_CONTAINERS_DIR,
# FLATNET_UNIT_DIR, FLATNET_COMPLETION_DIR, FLATNET_GROUP; FLATNET_PYTHON picks the
# interpreter the venv is made from; FLATNET_NO_APT=1 installs no Debian package.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/scripts/lib.sh"

dev=0 extras="" gateway=0 uninstall=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dev) dev=1 ;;
    --extras) extras=${2:?--extras needs a value, e.g. test,bench}; shift ;;
    --gateway) gateway=1 ;;
    --uninstall) uninstall=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

[ "$(id -u)" = 0 ] || { echo "install.sh must run as root (it installs packages and configures Podman)" >&2; exit 1; }

if [ "$uninstall" = 1 ]; then
  if [ -x "$FLATNET_PREFIX/bin/flatnet" ]; then
    cd / && exec "$FLATNET_PREFIX/bin/flatnet" uninstall --prefix "$FLATNET_PREFIX"
  fi
  if [ -e "$FLATNET_PREFIX/pyvenv.cfg" ]; then  # an install that stopped before flatnet was in it
    rm -rf "$FLATNET_PREFIX"
    log "removed $FLATNET_PREFIX (a venv without flatnet: an install that stopped half-way)"
    exit 0
  fi
  log "nothing to remove: no flatnet installation in $FLATNET_PREFIX"
  exit 0
fi

# Which Debian: read it, never assume (12 has Python 3.11, 13 has 3.13).
if [ -r /etc/debian_version ]; then
  debian=$(cat /etc/debian_version)
  case "${debian%%.*}" in
    12|13) log "Debian $debian" ;;
    *) log "Debian $debian: tested on Debian 12 and 13 only; going on" ;;
  esac
else
  log "not Debian (no /etc/debian_version): install Podman, runc, gcc, libsodium, OpenSSL (libcrypto) and Python's venv yourself"
  FLATNET_NO_APT=1
fi

pkgs=(podman runc containernetworking-plugins iproute2 iptables ca-certificates gcc libc6-dev libsodium-dev libssl-dev)
[ "$gateway" = 1 ] && pkgs+=(nginx libnginx-mod-http-lua lua-resty-core lua-cjson openssl)
PY=${FLATNET_PYTHON:-/usr/bin/python3}
[ -x "$PY" ] || { [ "$PY" = /usr/bin/python3 ] && apt_install python3; }
[ -x "$PY" ] || PY=$(command -v "$PY") || { echo "install.sh: no Python at ${FLATNET_PYTHON:-/usr/bin/python3}" >&2; exit 1; }
pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "install.sh: $PY is Python $pyver; flatnet needs 3.11 or newer" >&2; exit 1; }
# Debian splits venv/ensurepip and the C headers out of its Python: the packages that
# match this interpreter's version (python3.11-venv on 12, python3.13-venv on 13).
if dpkg -S "$(readlink -f "$PY")" >/dev/null 2>&1; then
  pkgs+=("python$pyver-venv" "python$pyver-dev")
fi
apt_install "${pkgs[@]}"
log "python: $PY ($pyver)"

# The venv. Made again when its interpreter is gone or another version (an upgrade from
# Debian 12 to 13 replaces 3.11 by 3.13).
VPY="$FLATNET_PREFIX/bin/python3"
if [ -e "$FLATNET_PREFIX/pyvenv.cfg" ]; then
  have=$("$VPY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo none)
  if [ "$have" != "$pyver" ]; then
    log "venv: $FLATNET_PREFIX has Python $have, making it again with $pyver"
    rm -rf "$FLATNET_PREFIX"
  fi
elif [ -e "$FLATNET_PREFIX" ] && [ -n "$(ls -A "$FLATNET_PREFIX")" ]; then
  echo "install.sh: $FLATNET_PREFIX exists and is not a virtual environment; choose another FLATNET_PREFIX" >&2
  exit 1
fi
if [ ! -x "$VPY" ]; then
  log "venv: $FLATNET_PREFIX"
  "$PY" -m venv "$FLATNET_PREFIX"
fi
pip=("$VPY" -m pip install -q --disable-pip-version-check)
# the build's own tools, then flatnet (no build isolation: the same tools every time)
"${pip[@]}" "setuptools>=77" wheel "cffi>=1.15"
# a build/ or egg-info left by an older setup.py holds absolute paths newer setuptools refuses
rm -rf "$here/build" "$here/flatnet.egg-info"
spec=$here
[ -n "$extras" ] && spec="$here[$extras]"
if [ "$dev" = 1 ]; then
  log "pip: flatnet from $here (editable${extras:+, extras $extras})"
  "${pip[@]}" --no-build-isolation -e "$spec"
  # the checkout's code is what runs: its C module is built in place, never stale
  "$VPY" "$here/engine/crypto/_build.py" >/dev/null
else
  log "pip: flatnet from $here${extras:+ (extras $extras)}"
  "${pip[@]}" --no-build-isolation "$spec"
fi
rm -rf "$here/build" "$here/flatnet.egg-info"

# From / so that the installed code, not the checkout, answers (the plugin's code root).
cd /
"$FLATNET_PREFIX/bin/flatnet" install --prefix "$FLATNET_PREFIX" \
  --bin-dir "${FLATNET_BIN_DIR:-/usr/local/bin}" \
  --plugin-dir "${FLATNET_CNI_PLUGIN_DIR:-/usr/lib/cni}" \
  --net-dir "${FLATNET_CNI_CONF_DIR:-/etc/cni/net.d}" \
  --containers-dir "${FLATNET_CONTAINERS_DIR:-/etc/containers}" \
  --unit-dir "${FLATNET_UNIT_DIR:-/etc/systemd/system}" \
  --completion-dir "${FLATNET_COMPLETION_DIR:-/usr/share/bash-completion/completions}" \
  --group "${FLATNET_GROUP:-flatnet}"
log "done: $("$FLATNET_PREFIX/bin/flatnet" --version) in $FLATNET_PREFIX"
