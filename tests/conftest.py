"""Session set-up for acmebot's tests.

Before anything else (pytest_configure) the pytest process moves into a fresh network
namespace that has only a loopback interface.  Every server of the lab and every acmebot
subprocess inherits it, so no test can reach anything but 127.0.0.1: a fallback to a real
CA, to the resolver of /etc/resolv.conf or to a real CT log fails instead of leaking out.

Fixtures: `lab` (session; see lab.py), `acmebot_config` (callable writing a config).
Helpers: ACMEBOT, make_config(tmp_path, lab, overrides), run_acmebot(config, *args, ...).
"""

import os
import shutil
import tempfile

import pytest

from lab import ACMEBOT, REQUIRED_BINARIES, Lab, isolate_network, make_config, run_acmebot  # noqa: F401 (re-exported)


def pytest_configure(config):
    missing = [name for name in REQUIRED_BINARIES if shutil.which(name) is None]
    if missing:
        pytest.exit(f"required program(s) not found: {', '.join(missing)} "
                    f"(sudo tests/install-deps installs them, as ./demo and .ci/run do)", returncode=3)
    error = isolate_network()
    if error:
        pytest.exit(f"cannot isolate the tests on loopback: {error}", returncode=3)
    os.environ["ACMEBOT_TEST_NETNS"] = "1"


@pytest.fixture(scope="session")
def lab():
    with tempfile.TemporaryDirectory(prefix="acmebot-lab-") as root:
        with Lab(root) as running:
            yield running


@pytest.fixture
def acmebot_config(tmp_path, lab):
    """make_config bound to this test's tmp_path and the lab: acmebot_config(overrides)."""
    def write(overrides=None):
        return make_config(tmp_path, lab, overrides)
    return write
