# Shared by scripts/install.sh, test.sh and demo.sh (sourced, not run).
log() { printf '[%s] %s\n' "${FLATNET_LOG_TAG:-install}" "$*" >&2; }

# apt_install PKG...: install the Debian packages that are missing, nothing else.
_apt_updated=0
apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "${FLATNET_NO_APT:-0}" = 1 ]; then
    log "missing Debian packages: ${missing[*]} (FLATNET_NO_APT=1: install them yourself)"
    return 1
  fi
  log "apt: installing ${missing[*]}"
  if [ "$_apt_updated" = 0 ]; then apt-get update -qq; _apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Where the venv is: the same default and override for every script.
FLATNET_PREFIX=${FLATNET_PREFIX:-/opt/flatnet}
