"""`import plankton_data` (and its CLI) must work on a data-prep machine without torch."""

import subprocess
import sys


def test_plankton_data_does_not_import_torch():
    code = (
        "import sys, plankton_data, plankton_data.cli.main, plankton_data.ingest, plankton_data.fixtures; "
        "bad = [m for m in ('torch', 'torchvision', 'timm', 'lightly') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
