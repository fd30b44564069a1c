"""Installing acmebot the ways the README gives admins: pipx, the copied file,
the systemd service and timer, the cron.d file, and logrotate.

pipx needs PyPI, which the tests' loopback-only network namespace cannot reach, so
.ci/run installs this tree with pipx before pytest starts, into
/opt/acmebot-test/pipx (the command: /opt/acmebot-test/pipx/bin/acmebot, or
$ACMEBOT_INSTALLED); the tests here check and use that install, and fail when it
is missing.  systemd-analyze (Debian `systemd`) and logrotate (Debian `logrotate`)
are real; no systemd needs to be running for `systemd-analyze verify`.
"""

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import make_config, run_acmebot
from lab import START_TIMEOUT, wait_for
from test_issue import KEY_TYPES, assert_ok, check_issued, default_paths
from test_units import ab  # acmebot imported in process once

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
REQUIREMENTS = ROOT / "requirements.txt"
SERVICE = ROOT / "systemd" / "acmebot.service"
TIMER = ROOT / "systemd" / "acmebot.timer"
CRON = ROOT / "cron.d" / "acmebot"
LOGROTATE = ROOT / "logrotate.d" / "acmebot"

INSTALLED_ENV = "ACMEBOT_INSTALLED"
DEFAULT_INSTALLED = "/opt/acmebot-test/pipx/bin/acmebot"
INSTALL_HINT = ("install it as .ci/run does: PIPX_HOME=/opt/acmebot-test/pipx "
                "PIPX_BIN_DIR=/opt/acmebot-test/pipx/bin pipx install --force . "
                f"(or set {INSTALLED_ENV} to an installed acmebot command)")


def installed_acmebot():
    """The pipx-installed acmebot command; fails the test when it is missing."""
    path = os.environ.get(INSTALLED_ENV) or DEFAULT_INSTALLED
    if not os.access(path, os.X_OK):
        pytest.fail(f"no installed acmebot at {path}; {INSTALL_HINT}", pytrace=False)
    return path


def requirement_lines():
    return sorted(line.strip() for line in REQUIREMENTS.read_text().splitlines()
                  if line.strip() and not line.startswith("#"))


# -- packaging ---------------------------------------------------------------------------------

def test_pyproject_matches_requirements_and_version():
    """pyproject.toml's dependencies are requirements.txt's, with the same bounds;
    its version is read from the VERSION line of acmebot (found exactly once);
    acmebot's own dependency check knows every one of them."""
    project = tomllib.loads(PYPROJECT.read_text())
    assert sorted(project["project"]["dependencies"]) == requirement_lines()
    assert project["project"]["dynamic"] == ["version"]
    version = project["tool"]["hatch"]["version"]
    assert version["path"] == "acmebot"
    found = re.findall(version["pattern"], (ROOT / "acmebot").read_text())
    assert found == [ab.VERSION]
    names = {re.match(r"[A-Za-z0-9_.-]+", line).group(0).lower() for line in requirement_lines()}
    assert {name.lower() for name in ab.DEPENDENCIES.values()} == names
    # the one file, unchanged, as the module acmebot.py (compiled once by the installer), run by a command
    assert project["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"] == {"acmebot": "acmebot.py"}
    assert project["project"]["scripts"] == {"acmebot": "acmebot:main"}


@pytest.mark.lab     # it checks what tests/install-deps installed: stale after every edit until reinstalled
def test_pipx_install_puts_acmebot_with_its_dependencies_on_path():
    program = installed_acmebot()
    result = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"acmebot {ab.VERSION}\n", "")
    # the command runs the single file, installed unchanged as the module acmebot.py, by the
    # python of pipx's venv, from the bytecode the installer compiled (never compiled again per run)
    script = Path(os.path.realpath(program))
    shebang = script.read_text().partition("\n")[0]
    python = shebang.removeprefix("#!")
    assert Path(python).parent == script.parent and os.access(python, os.X_OK)
    found = subprocess.run([python, "-c", "import acmebot; print(acmebot.__file__); print(acmebot.__cached__)"],
                           capture_output=True, text=True, timeout=60)
    assert found.returncode == 0, found.stderr
    module, cached = map(Path, found.stdout.splitlines())
    assert module.name == "acmebot.py"
    assert module.read_bytes() == (ROOT / "acmebot").read_bytes(), \
        f"the installed {module} is not this tree's acmebot: reinstall it; {INSTALL_HINT}"
    compiled = cached.stat().st_mtime_ns
    verbose = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=60,
                             env=dict(os.environ, PYTHONVERBOSE="1"))
    assert verbose.returncode == 0, verbose.stderr
    assert f"# code object from '{cached}'" in verbose.stderr       # loaded, not compiled
    assert cached.stat().st_mtime_ns == compiled
    metadata = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('acmebot')); "
                       "print('\\n'.join(m.requires('acmebot')))"],
        capture_output=True, text=True, timeout=60)
    assert metadata.returncode == 0, metadata.stderr
    version, *requires = metadata.stdout.splitlines()
    assert version == ab.VERSION
    # the optional extras (notify: apprise, dns-providers: dns-lexicon) are not requirements
    assert len([r for r in requires if "extra ==" not in r]) == len(requirement_lines())
    # every dependency importable there, each at least at its lower bound
    check = subprocess.run(
        [python, "-c", "import acme, josepy, cryptography, dns, requests, OpenSSL; "
                       "import importlib.metadata as m; "
                       "print(m.version('acme'), m.version('josepy'), m.version('cryptography'))"],
        capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    acme, josepy, cryptography = (tuple(int(x) for x in v.split(".")[:2]) for v in check.stdout.split())
    assert (5, 9) <= acme < (6, 0) and (2, 0) <= josepy < (3, 0) and cryptography >= (43, 0)


def test_pipx_installed_acmebot_issues_a_certificate(lab, tmp_path):
    """A whole lab run (pebble, BIND, dns-01) by the installed command, then a
    second run that changes nothing, and a third that takes the quiet path."""
    program = installed_acmebot()
    lab.add_hosts("example.test", "pipx")
    name = "pipx.example.test"
    config = make_config(tmp_path, lab, {"certificates": {name: {}}})
    result = run_acmebot(config, program=program)
    assert_ok(result)
    for key_type in KEY_TYPES:
        assert f"Issued certificate {name} ({key_type})" in result.stdout
        check_issued(lab, default_paths(tmp_path, name, key_type), key_type, [name])
    again = run_acmebot(config, program=program)
    assert_ok(again)
    assert again.stdout == ""
    # the run after a quiet one decides from the quiet record (tests/test_quiet.py)
    quiet = run_acmebot(config, "--verbose", program=program)
    assert_ok(quiet)
    assert "quiet: nothing changed since the last full run" in quiet.stdout


def test_copied_file_with_a_python_lacking_the_dependencies(tmp_path):
    """The single file copied to a bin directory and run by a python without
    the packages (its `#!/usr/bin/env python3` finds a bare venv first on PATH):
    --version works, a run is one line naming the packages and how to install
    them, exit 2; --status needs only cryptography and says so."""
    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    copy = bindir / "acmebot"
    shutil.copy2(ROOT / "acmebot", copy)
    assert os.stat(copy).st_mode & stat.S_IXUSR
    config = tmp_path / "acmebot.json"
    config.write_text('{"account": {"email": "admin@example.test"}}\n')
    env = dict(os.environ, PATH=f"{venv / 'bin'}:{os.environ['PATH']}")
    env.pop("PYTHONPATH", None)

    def run(*args):
        return subprocess.run([str(copy), *args], capture_output=True, text=True, env=env, cwd=tmp_path,
                              timeout=60)

    version = run("--version")
    assert (version.returncode, version.stdout) == (0, f"acmebot {ab.VERSION}\n")
    result = run("--config", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"ERROR: {venv / 'bin' / 'python'}") or lines[0].startswith(
        f"ERROR: {venv / 'bin' / 'python3'}"), lines[0]
    assert "lacks the Python packages acme, josepy, cryptography, dnspython, requests, pyOpenSSL" in lines[0]
    assert "pipx install" in lines[0] and "pip install -r requirements.txt" in lines[0]
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    status = run("--config", str(config), "--status")
    assert status.returncode == 2
    assert len(status.stderr.splitlines()) == 1
    assert "lacks the Python package cryptography that acmebot needs" in status.stderr


# -- systemd and cron --------------------------------------------------------------------------

def unit_settings(path):
    """{(section, key): [values]} of a unit file (keys may repeat; no line continuations used)."""
    settings, section = {}, None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        assert "=" in line and not line.endswith("\\"), f"{path.name}:{number}: {line}"
        key, value = line.split("=", 1)
        settings.setdefault((section, key.strip()), []).append(value.strip())
    return settings


def test_systemd_units_pass_systemd_analyze_verify(tmp_path):
    """systemd-analyze verify (no systemd running needed) on copies whose
    ExecStart names the pipx-installed command, since verify checks that it is
    executable; a warning (an unknown or misspelt setting) fails the test too."""
    program = installed_acmebot()
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze not found: install the Debian package systemd (see .ci/run)"
    units = tmp_path / "units"
    units.mkdir()
    text = SERVICE.read_text()
    assert text.count("\nExecStart=/usr/local/bin/acmebot\n") == 1
    (units / "acmebot.service").write_text(text.replace("\nExecStart=/usr/local/bin/acmebot\n",
                                                        f"\nExecStart={program}\n"))
    shutil.copy(TIMER, units / "acmebot.timer")
    result = subprocess.run([analyze, "verify", "--man=no", str(units / "acmebot.service"),
                             str(units / "acmebot.timer")], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    # and verify does catch what it should
    (units / "acmebot.service").write_text(text.replace("ProtectHome=yes", "ProtectHom=yes").replace(
        "\nExecStart=/usr/local/bin/acmebot\n", f"\nExecStart={program}\n"))
    broken = subprocess.run([analyze, "verify", "--man=no", str(units / "acmebot.service")],
                            capture_output=True, text=True, timeout=120)
    assert "Unknown key 'ProtectHom'" in broken.stderr


def test_service_writes_only_where_acmebot_writes_by_default():
    """Every default directory acmebot writes is writable in the service, and
    nothing else: each writable path is a default directory (after symlinks:
    /var/run is /run) or the directory acmebot creates one in when it first
    needs it."""
    settings = unit_settings(SERVICE)
    service = {key: values for (section, key), values in settings.items() if section == "Service"}
    assert service["ProtectSystem"] == ["strict"]
    writable = {os.path.realpath(path.lstrip("-+")) for line in service["ReadWritePaths"] for path in line.split()}
    writable |= {f"/var/log/{name}" for line in service.get("LogsDirectory", []) for name in line.split()}
    needed = {os.path.realpath(value.split("{")[0].rstrip("/")) for kind, value in ab.DEFAULT_DIRECTORIES.items()
              if value and kind != "update_key"}          # zone update keys are only read
    assert needed >= {"/run", "/var/log/acmebot", "/var/local/acmebot", "/etc/ssl/private", "/etc/ssl/archive"}
    for directory in needed:
        assert any(directory == path or directory.startswith(path + "/") for path in writable), directory
    for path in writable:
        assert any(path == directory or os.path.dirname(directory) == path for directory in needed), path
    assert service["LogsDirectoryMode"] == ["0750"]


def test_service_and_timer_settings():
    settings = unit_settings(SERVICE)
    service = {key: values[-1] for (section, key), values in settings.items() if section == "Service"}
    assert service["Type"] == "oneshot"
    assert service["ExecStart"] == "/usr/local/bin/acmebot"       # the timer waits, not acmebot
    assert service["StandardOutput"] == service["StandardError"] == "journal"
    for key, value in {"PrivateTmp": "yes", "NoNewPrivileges": "yes", "ProtectHome": "yes",
                       "ProtectKernelTunables": "yes", "ProtectControlGroups": "yes", "LockPersonality": "yes",
                       "RestrictRealtime": "yes", "SystemCallArchitectures": "native", "UMask": "0022",
                       "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK"}.items():
        assert service[key] == value, key
    # settings that would break `systemctl reload NAME` or hooks run from the service
    for key in ("PrivateDevices", "DevicePolicy", "MemoryDenyWriteExecute", "SystemCallFilter", "PrivateNetwork",
                "RestrictNamespaces", "CapabilityBoundingSet", "DynamicUser", "User"):
        assert key not in service, key
    timer = {key: values[-1] for (section, key), values in unit_settings(TIMER).items()}
    assert timer == {"Description": "Daily acmebot run", "OnCalendar": "daily", "RandomizedDelaySec": "1h",
                     "Persistent": "true", "WantedBy": "timers.target"}


def test_cron_file():
    """cron.d: no dot in the file name (cron would skip it), a PATH with sbin (service
    reload commands), one active daily line with --randomwait run as root."""
    assert "." not in CRON.name
    lines = [line for line in CRON.read_text().splitlines() if line.strip() and not line.startswith("#")]
    env = dict(line.split("=", 1) for line in lines if re.match(r"^[A-Z]+=", line))
    assert "/usr/sbin" in env["PATH"].split(":") and "MAILTO" in env
    jobs = [line.split() for line in lines if not re.match(r"^[A-Z]+=", line)]
    assert len(jobs) == 1
    minute, hour, day, month, weekday, user, *command = jobs[0]
    assert (day, month, weekday, user) == ("*", "*", "*", "root")
    assert 0 <= int(minute) < 60 and 0 <= int(hour) < 24
    assert command == ["/usr/local/bin/acmebot", "--randomwait"]


# -- log rotation ------------------------------------------------------------------------------

def test_logrotate_while_a_run_waits_keeps_its_lines(lab, tmp_path):
    """A run (with --randomwait) has its log file open when the repository's
    logrotate.d/acmebot rotates it; the run's later lines land in the new file.
    The rotation happens while a set_dns_challenge hook holds the run (the hook
    waits for a file the test creates), not during the randomwait sleep: a sleep
    gives no point at which the test can know the run is still waiting."""
    logrotate = shutil.which("logrotate")
    assert logrotate, "logrotate not found: install the Debian package logrotate (see .ci/run)"
    lab.add_hosts("example.test", "rotate")
    name = "rotate.example.test"
    reached, go = tmp_path / "hook-reached", tmp_path / "hook-go"
    config = make_config(tmp_path, lab, {
        "settings": {"min_run_delay": 0.1, "max_run_delay": 0.2},
        "certificates": {name: {"key_types": ["ecdsa"]}},
        "hooks": {"set_dns_challenge": f"touch {reached}; n=0; while [ ! -e {go} ] && [ $n -lt 1200 ]; "
                                       f"do sleep 0.1; n=$((n+1)); done; echo hook released"}})
    log = tmp_path / "log" / "acmebot.log"
    rotate_conf = tmp_path / "logrotate.conf"
    text = LOGROTATE.read_text()
    assert text.count("/var/log/acmebot/acmebot.log {") == 1
    rotate_conf.write_text(text.replace("/var/log/acmebot/acmebot.log {", f"{log} {{"))
    env = dict(os.environ, ACMEBOT_TEST_NETNS="1")
    for variable in ("ACMEBOT_PASSPHRASE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        env.pop(variable, None)
    run = subprocess.Popen([sys.executable, str(ROOT / "acmebot"), "--config", str(config), "--accept-terms",
                            "--randomwait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=env, cwd=tmp_path)
    try:
        wait_for("the set_dns_challenge hook", reached.exists, timeout=START_TIMEOUT * 2, process=run)
        before = log.read_text()
        assert "(--randomwait)" in before and "Issued certificate" not in before
        rotated = subprocess.run([logrotate, "--force", "--state", str(tmp_path / "logrotate.state"),
                                  str(rotate_conf)], capture_output=True, text=True, timeout=60)
        assert rotated.returncode == 0, rotated.stderr
        go.touch()
        stdout, stderr = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            os.kill(run.pid, signal.SIGKILL)
            run.wait()
    assert (run.returncode, stderr) == (0, ""), stdout + stderr
    assert f"Issued certificate {name} (ecdsa)" in stdout
    old, new = tmp_path / "log" / "acmebot.log.1", log
    assert not (tmp_path / "log" / "acmebot.log.1.gz").exists()       # delaycompress
    assert old.read_text().startswith(before)
    assert "Issued certificate" not in old.read_text()
    assert f"Issued certificate {name} (ecdsa)" in new.read_text()
    assert "hook released" in new.read_text()
    assert stat.S_IMODE(new.stat().st_mode) == 0o640                  # logrotate's `create 0640 root adm`
    # a second rotation compresses the first (delaycompress), the third run's file is new again
    again = run_acmebot(config)
    assert_ok(again)
    rotated = subprocess.run([logrotate, "--force", "--state", str(tmp_path / "logrotate.state"),
                              str(rotate_conf)], capture_output=True, text=True, timeout=60)
    assert rotated.returncode == 0, rotated.stderr
    assert (tmp_path / "log" / "acmebot.log.2.gz").exists() and (tmp_path / "log" / "acmebot.log.1").exists()
