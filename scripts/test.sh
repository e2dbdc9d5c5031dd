#!/usr/bin/env bash
# The README's test command (run as root): installs what is missing, then runs the whole
# suite (unit, namespace integration, Podman end-to-end) with the venv's Python.
#
# - scripts/install.sh --dev --extras test,bench --gateway: the venv (FLATNET_PREFIX,
#   /opt/flatnet) with flatnet editable from this checkout, pytest, hypothesis,
#   noiseprotocol, ruff, mypy, matplotlib; the plugin and network for Podman;
# - the Debian packages only the tests and benchmarks use (below);
# - `FLATNET_PREFIX/bin/python3 -m pytest "$@"` from the checkout. pytest's exit code 5
#   (no test collected) is a failure.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/scripts/lib.sh"
FLATNET_LOG_TAG=test

TEST_PKGS=(busybox-static iputils-ping ethtool tcpdump procps psmisc luajit2 chromium prometheus
           nebula wireguard-go wireguard-tools wrk iperf3
           debootstrap libasan8 libubsan1 etcd-server)  # the Podman 5 sandbox, the fuzz harness, the etcd store
bash "$here/scripts/install.sh" --dev --extras test,bench --gateway || { echo "install failed" >&2; exit 1; }
apt_install "${TEST_PKGS[@]}" || { echo "installing the test tools failed" >&2; exit 1; }
cd "$here"
"$FLATNET_PREFIX/bin/python3" -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating that as a failure" >&2
  exit 1
fi
exit "$rc"
