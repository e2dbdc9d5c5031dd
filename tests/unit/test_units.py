import shutil
import subprocess

import pytest

from flatnet_cli.units import render


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_units_verify(tmp_path):
    units = render(str(tmp_path))
    proc = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=60)
    # verify prints problems of other units on the machine too: only ours matter
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if "flatnet-" in line]
    assert proc.returncode == 0 and not ours, proc.stdout + proc.stderr
