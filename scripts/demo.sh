#!/usr/bin/env bash
# The README's main command: install what is missing, then bring up Flatnet on this
# machine (hosts in network namespaces, engines, container namespaces attached by the
# CNI plugin) and show it working (flatnet/demo.py). `flatnet down` removes it all.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/scripts/lib.sh"
FLATNET_LOG_TAG=demo
bash "$here/scripts/install.sh" --dev
apt_install iputils-ping  # the demo pings between containers
cd "$here"
if [ -f /var/lib/flatnet-lab/lab.json ]; then
  "$FLATNET_PREFIX/bin/python3" -m flatnet down
fi
exec "$FLATNET_PREFIX/bin/python3" -m flatnet up "$@"
