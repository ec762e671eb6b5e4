"""examples/multisited.yaml (what `make run` serves) is valid and documents every server
option multisited knows (`multisited --help-config`), so the example cannot rot silently."""

import os
import re
import subprocess

from conftest import MULTISITED, REPO

EXAMPLE = os.path.join(REPO, "examples", "multisited.yaml")


def test_example_config_checks():
    assert os.access(MULTISITED, os.X_OK), f"{MULTISITED} is not built"
    r = subprocess.run([MULTISITED, "-t", "-c", EXAMPLE], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def test_example_documents_every_server_option():
    r = subprocess.run([MULTISITED, "--help-config"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    opts = re.findall(r"^server\.([a-z0-9-]+) ", r.stdout, re.M)
    assert len(opts) >= 11, f"--help-config lists too few server options:\n{r.stdout}"
    with open(EXAMPLE) as f:
        text = f.read()
    missing = [o for o in opts if not re.search(rf"^\s+{re.escape(o)}:", text, re.M)]
    assert not missing, f"examples/multisited.yaml lacks server options {missing}"
