"""acmebot in process with a clock the test sets (main(argv, services)): renewal
windows, expiry notices and --status/--check at chosen times, without a CA and
without waiting.  The certificate is made here (a CA is not needed to judge one);
the CA, where a run asks it, is a closed loopback port."""

import datetime
import grp
import json
import os
import pwd
import signal
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lab import free_port
from lab.inprocess import FakeClock, acmebot, run_main

NAME = "clock.example.test"
HOOK = Path(__file__).resolve().parent / "lab" / "hook_record.py"
ISSUED = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
LIFETIME = datetime.timedelta(days=90)


def setup(tmp_path, **settings):
    """A config for NAME (ECDSA only, with a certificate on disk issued at ISSUED
    for 90 days), its CA a closed port; returns the config path."""
    tmp = Path(tmp_path)
    directories = {kind: None for kind in ("previous_key", "full_key", "full_certificate", "chain",
                                          "param", "hpkp", "sct", "ocsp")}
    directories.update(pid=str(tmp / "run"), log=str(tmp / "log"), resource=str(tmp / "resource"),
                       private_key=str(tmp / "private"), backup_key=str(tmp / "private"),
                       certificate=str(tmp / "certs"), update_key=str(tmp / "keys"), challenge=str(tmp / "zones"),
                       archive=str(tmp / "archive"), temp=str(tmp / "tmp"), http_challenge=str(tmp / "web"))
    raw = {"account": {"email": "admin@example.test"},
           "settings": dict({"acme_directory_url": f"https://127.0.0.1:{free_port()}/dir", "key_size": 0,
                             "key_curve": "secp256r1", "file_user": pwd.getpwuid(os.getuid()).pw_name,
                             "file_group": grp.getgrgid(os.getgid()).gr_name, "ct_submit_logs": [],
                             "ocsp_responder_urls": [], "log_level": "debug"}, **settings),
           "directories": directories,
           "certificates": {NAME: {}}}
    config = tmp / "acmebot.json"
    config.write_text(json.dumps(raw, indent=2))
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(ISSUED)
            .not_valid_after(ISSUED + LIFETIME)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
            .sign(key, hashes.SHA256()))
    for directory, name, data, mode in (
            ("private", f"{NAME}.ecdsa.key", key.private_bytes(serialization.Encoding.PEM,
                                                               serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()), 0o600),
            ("certs", f"{NAME}.ecdsa.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)):
        (tmp / directory).mkdir(exist_ok=True)
        path = tmp / directory / name
        path.touch(mode)
        path.write_bytes(data)
    return config


def status(config, clock):
    result = run_main(config, "--status", "--json", clock=clock)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    (row,) = json.loads(result.stdout)["certificates"]
    return row


def test_status_and_check_follow_the_clock(tmp_path):
    config = setup(tmp_path)
    clock = FakeClock(ISSUED + datetime.timedelta(days=1))
    row = status(config, clock)
    assert row["state"] == "valid" and row["days_left"] == 89.0
    assert row["renewal_due"] is False and row["expiry_notice"] is False
    assert "renew from 2030-03-02 00:00 (30 days before expiry)" in row["renewal_reason"]
    check = run_main(config, "--check", clock=clock)
    assert check.returncode == 0 and check.stdout.startswith("ACMEBOT OK - 1 certificate valid |")

    clock.set(ISSUED + datetime.timedelta(days=61))                  # 29 days left: renewal due
    row = status(config, clock)
    assert row["renewal_due"] is True and row["expiry_notice"] is False and row["days_left"] == 29.0
    check = run_main(config, "--check", clock=clock)
    assert check.returncode == 1 and check.stdout.startswith("ACMEBOT WARNING - 1 due |")

    clock.advance(days=22, hours=12)                                  # 6.5 days left: within expiry_notice_days
    row = status(config, clock)
    assert row["expiry_notice"] is True and row["days_left"] == 6.5
    check = run_main(config, "--check", clock=clock)
    assert check.returncode == 2 and check.stdout.startswith("ACMEBOT CRITICAL - 1 expiring |")
    assert "expires in 6.5 days (2030-04-01 00:00 UTC)" in check.stdout

    clock.set(ISSUED + LIFETIME + datetime.timedelta(seconds=1))
    row = status(config, clock)
    assert row["state"] == "expired" and row["days_left"] <= 0
    check = run_main(config, "--check", clock=clock)
    assert check.returncode == 2 and check.stdout.startswith("ACMEBOT CRITICAL - 1 expired |")


def hook_calls(record):
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def test_expiry_notice_once_per_day_left_by_the_clock(tmp_path):
    """A run when renewal is due, with the CA unreachable: the log shouts on every
    run, the notify hook hears once per day left; the metrics carry the clock's time."""
    record = tmp_path / "notify.jsonl"
    config = setup(tmp_path, metrics_file=str(tmp_path / "acmebot.prom"))
    raw = json.loads(config.read_text())
    raw["hooks"] = {"notify": f"{sys.executable} {HOOK} {record} event={{event}} days_left={{days_left}} "
                              f"problem={{problem}}"}
    config.write_text(json.dumps(raw))
    clock = FakeClock(ISSUED + datetime.timedelta(days=40))
    quiet = run_main(config, clock=clock)                             # 50 days left: nothing to do, no CA
    assert quiet.returncode == 0 and quiet.stderr == "" and not record.exists()

    clock.set(ISSUED + LIFETIME - datetime.timedelta(days=3, hours=12))
    sessions = []

    def session():                      # the HTTP sessions of the run come from its Services
        sessions.append(acmebot().new_session())
        return sessions[-1]
    for _ in range(2):
        result = run_main(config, services=clock.services(session=session))
        assert result.returncode == 3, result.stdout + result.stderr
        assert f"CERTIFICATE {NAME} (ecdsa) EXPIRES IN 3.5 DAYS (2030-04-01 00:00 UTC) AND COULD NOT BE " \
               "RENEWED" in result.stderr
        assert "cannot reach the CA" in result.stderr and "Traceback" not in result.stderr
    assert len(sessions) == 2          # one ACME client per run, on the test's session
    calls = hook_calls(record)
    assert [(call["event"], call["days_left"]) for call in calls] == [("expiry", "3.5")]
    assert "cannot reach the CA" in calls[0]["problem"]
    metrics = (tmp_path / "acmebot.prom").read_text()
    assert f"acmebot_last_run_timestamp_seconds {clock().timestamp():.0f}\n" in metrics

    clock.advance(days=1)                                             # a day less left: told again
    assert run_main(config, clock=clock).returncode == 3
    assert [(call["event"], call["days_left"]) for call in hook_calls(record)][1:] == [("expiry", "2.5")]


def test_main_in_process_leaves_no_handlers_behind(tmp_path):
    """main() run again and again in one process: its log handlers (the log file's
    too) are closed when it returns, and the loggers and signal handlers are as before."""
    ab = acmebot()
    config = setup(tmp_path)
    log_file = tmp_path / "log" / "acmebot.log"
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    loggers = [(logger, logger.level, logger.propagate) for logger in (ab.log, ab.logging.getLogger("acme"))]
    clock = FakeClock(ISSUED + datetime.timedelta(days=1))

    def open_log_files():
        return [fd for fd in os.listdir("/proc/self/fd")
                if os.path.realpath(f"/proc/self/fd/{fd}") == str(log_file)]

    for _ in range(3):
        result = run_main(config, "--verbose", clock=clock)
        assert result.returncode == 0, result.stdout + result.stderr
        assert ab.log.handlers == [] and open_log_files() == []
        assert [(logger, logger.level, logger.propagate) for logger, _, _ in loggers] == loggers
        assert {signum: signal.getsignal(signum) for signum in handlers} == handlers
    # the first run made the backup key, the others had nothing to do (the third decided so from the
    # quiet record the second left, tests/test_quiet.py); each logged once to the file
    text = log_file.read_text()
    assert text.count("Installed new backup key") == 1 and text.count("certs: nothing to do") == 1
    assert text.count("quiet: nothing changed since the last full run") == 1
    assert text.count("timing: ") == 2              # the quiet run says its time in its own line
