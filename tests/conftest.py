"""Session set-up for acmebot's tests.

Before anything else (pytest_configure) the pytest process moves into a fresh network
namespace that has only a loopback interface.  Every server of the lab and every acmebot
subprocess inherits it, so no test can reach anything but 127.0.0.1: a fallback to a real
CA, to the resolver of /etc/resolv.conf or to a real CT log fails instead of leaking out.

Tiers: every test that uses the `lab` fixture (directly or through another fixture) is
marked `lab`, every other one `unit`: `python3 -m pytest -m unit` runs the unit tier in
seconds without root (in a user namespace of its own, still loopback only).

Fixtures: `lab` (session; see lab.py), `acmebot_config` (callable writing a config).
Helpers: ACMEBOT, make_config(tmp_path, lab, overrides), run_acmebot(config, *args, ...).
"""

import os
import shutil
import tempfile

import pytest

from lab import ACMEBOT, REQUIRED_BINARIES, Lab, isolate_network, make_config, run_acmebot  # noqa: F401 (re-exported)


# Before isolate_network: without root it makes a user namespace in which we are "root".
STARTED_AS_ROOT = os.geteuid() == 0


def pytest_configure(config):
    config.addinivalue_line("markers", "unit: no servers and no root; in process or small programs, "
                                       "seconds (`python3 -m pytest -m unit`)")
    config.addinivalue_line("markers", "lab: against the real servers of the lab (BIND, pebble, nginx, ...); "
                                       "needs root")
    error = isolate_network()
    if error:
        pytest.exit(f"cannot isolate the tests on loopback: {error}", returncode=3)
    os.environ["ACMEBOT_TEST_NETNS"] = "1"


# Fixtures that start servers of the lab: a test that uses one (directly or through
# another fixture) is in the lab tier; every other test is a unit test.
LAB_FIXTURES = {"lab", "mountns", "a2c"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        lab_test = bool(LAB_FIXTURES & set(getattr(item, "fixturenames", ()))) or \
            item.get_closest_marker("lab") is not None
        item.add_marker(pytest.mark.lab if lab_test else pytest.mark.unit)


@pytest.fixture(scope="session")
def lab():
    missing = [name for name in REQUIRED_BINARIES if shutil.which(name) is None]
    if missing:
        pytest.exit(f"required program(s) not found: {', '.join(missing)} "
                    f"(sudo tests/install-deps installs them, as ./demo and .ci/run do)", returncode=3)
    if not STARTED_AS_ROOT:
        pytest.exit("the lab tests need root (sudo python3 -m pytest tests); "
                    "`python3 -m pytest -m unit` runs the unit tests without it", returncode=3)
    with tempfile.TemporaryDirectory(prefix="acmebot-lab-") as root:
        with Lab(root) as running:
            yield running


@pytest.fixture
def acmebot_config(tmp_path, lab):
    """make_config bound to this test's tmp_path and the lab: acmebot_config(overrides)."""
    def write(overrides=None):
        return make_config(tmp_path, lab, overrides)
    return write
