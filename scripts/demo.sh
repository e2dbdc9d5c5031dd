#!/usr/bin/env bash
# The README's main command: install what is missing, then bring up Flatnet on this
# machine (hosts in network namespaces, engines, container namespaces attached by the
# CNI plugin) and show it working. `flatnet down` removes it all.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/install.sh"
cd "$here"
if [ -f /var/lib/flatnet-lab/lab.json ]; then
  python3 -m flatnet_cli down
fi
exec python3 -m flatnet_cli up "$@"
