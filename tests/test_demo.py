"""The README's first command: the demo issues real certificates against the lab and
shows that a second run changes nothing.  Run here without its install step (CI has
installed everything); the demo makes its own loopback-only namespace and lab."""

import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parent / "lab" / "demo.py"


def test_demo_issues_certificates_and_the_second_run_changes_nothing():
    result = subprocess.run([sys.executable, str(DEMO)], capture_output=True, text=True, timeout=600,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "Traceback" not in out + result.stderr
    for name in ("demo.example.test.rsa.pem", "demo.example.test.ecdsa.pem", "web.example.test.ecdsa.pem"):
        assert name in out
    assert "certs: nothing to do" in out
    assert "every server is stopped" in out
