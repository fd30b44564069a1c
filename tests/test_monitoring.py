"""Monitoring and notifications: `--check` (the Nagios/Icinga plugin exit codes for
each state), settings.metrics_file (a node_exporter textfile, read back with
prometheus_client's own parser), notifications once per state change through the
notify hook and Apprise (a real JSON receiver and a real SMTP server on loopback,
aiosmtpd), and sd-daemon priorities when the output is the journal.

Failures are real: the CA URL points at a closed port, or pebble cannot fetch an
http-01 answer; expiry comes from a short-validity pebble (9 s certificates)."""

import datetime
import http.server
import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from prometheus_client.parser import text_string_to_metric_families

from conftest import make_config, run_acmebot
from lab import ACMEBOT, acmebot_command, free_port
from lab.inprocess import FakeClock, run_main
from test_ca_features import HOOK, cert_of, set_due, short_pebble  # noqa: F401 (fixture)
from test_issue import assert_clean, assert_ok, default_paths
from test_status import edit, set_url, snapshot_all
from test_units import ab  # acmebot imported in process

TOKEN = "tok-3f9c2a7e5b1d4c8a9e6f"       # in the json:// URL: must never be printed


def config_for(tmp_path, lab, certificates, settings=None, **more):
    overrides = {"settings": dict({"key_size": 0}, **(settings or {})), "certificates": certificates}
    overrides.update(more)
    return make_config(tmp_path, lab, overrides)


def closed_ca():
    return f"https://127.0.0.1:{free_port()}/dir"


def check(config, *args, clock=None):
    result = run_main(config, "--check", *args, clock=clock) if clock else run_acmebot(config, "--check", *args)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout.startswith("ACMEBOT "), result.stdout + result.stderr
    return result.returncode, result.stdout.splitlines()


# -- --check ---------------------------------------------------------------------------------------

PERF = re.compile(r"^ACMEBOT (OK|WARNING|CRITICAL|UNKNOWN) - (.+) \| certificates=(\d+) ok=(\d+) warning=(\d+) "
                  r"critical=(\d+) unknown=(\d+)( min_days_left=-?[0-9.]+;;[0-9.]+:)?$")


def test_check_exit_codes_for_each_state(lab, short_pebble, tmp_path):
    hosts = ["chkok", "chkroll", "chkfail", "chkflaky", "chkexp", "chknew"]
    # "chkexp" comes from the short pebble (9 s): expiring within the notice window, then expired
    lab.add_hosts("example.test", *hosts)
    ok, roll, fail, flaky, expired, new = (f"{h}.example.test" for h in hosts)
    unserved = tmp_path / "unserved"
    unserved.mkdir()
    config = config_for(tmp_path, lab, {name: {} for name in (ok, roll, fail, flaky, expired)},
                        {"acme_directory_url": short_pebble.directory_url},
                        http_challenges={fail: str(unserved)})          # pebble gets a 404
    # in process, with a clock: "chkroll" is issued 800 days before the others (expiration_days is 730)
    clock = FakeClock(real_sleep=True)
    assert_ok(run_main(config, expired, clock=clock))
    set_url(config, lab.directory_url)
    assert_ok(run_main(config, roll, clock=clock))
    set_due(clock, default_paths(tmp_path, expired, "ecdsa")["certificate"])
    code, lines = check(config, expired, clock=clock)      # in the notice window, not yet expired
    assert code == 2 and PERF.match(lines[0]).group(2) in ("1 expiring", "1 expired"), lines
    assert PERF.match(lines[0]).group(2) == "1 expiring"
    assert "expires in 0 days" in lines[1] or "expired" in lines[1]
    clock.advance(days=800)                                 # "chkexp" has expired
    result = run_main(config, ok, roll, fail, flaky, clock=clock)
    assert_clean(result)
    assert result.returncode == 4, result.stdout + result.stderr
    set_url(config, closed_ca())
    result = run_main(config, "--renew", flaky, clock=clock)         # the CA cannot be reached
    assert_clean(result)
    assert result.returncode == 3, result.stdout + result.stderr
    edit(config, lambda raw: raw["certificates"].update({new: {}}))
    before = snapshot_all(tmp_path)

    code, lines = check(config, ok, clock=clock)
    assert code == 0, lines
    match = PERF.match(lines[0])
    assert match and match.group(1) == "OK" and match.group(2) == "1 certificate valid", lines[0]
    assert match.groups()[2:7] == ("1", "1", "0", "0", "0") and match.group(8).endswith(";;7:")
    assert lines[1].startswith(f"OK: {ok} (ecdsa): valid until ") and len(lines) == 2

    expected = {roll: (1, "1 rollover due", "private key rollover due"),
                flaky: (1, "1 failed", "the last run failed: "),
                fail: (2, "1 missing", "no certificate; the last run failed: "),
                new: (2, "1 missing", "no certificate yet: not issued"),
                expired: (2, "1 expired", "expired ")}
    for name, (want, summary, detail) in expected.items():
        code, lines = check(config, name, clock=clock)
        assert code == want, lines
        assert PERF.match(lines[0]).group(2) == summary, lines[0]
        assert lines[1].startswith(f"{('OK', 'WARNING', 'CRITICAL')[want]}: {name} (ecdsa): ") and detail in lines[1]
    assert "cannot reach the CA" in check(config, flaky, clock=clock)[1][1]

    # all at once: the worst wins, the summary counts, one detail line each, worst first
    code, lines = check(config, clock=clock)
    assert code == 2
    match = PERF.match(lines[0])
    assert match.group(1) == "CRITICAL" and match.group(2) == "1 expired, 2 missing, 1 failed, 1 rollover due"
    assert match.groups()[2:7] == ("6", "1", "2", "3", "0")
    assert [line.split(":")[0] for line in lines[1:]] == ["CRITICAL"] * 3 + ["WARNING"] * 2 + ["OK"]
    assert snapshot_all(tmp_path) == before                           # --check changes nothing
    plain = run_main(config, "--status", clock=clock)
    assert plain.returncode == 0 and plain.stderr == ""               # plain --status keeps exit 0

    # acmebot cannot tell: UNKNOWN (exit 3), never CRITICAL
    status = tmp_path / "resource" / "status.json"
    status.write_text("{not json")
    code, lines = check(config, ok, clock=clock)
    assert code == 3 and lines[0].startswith(f"ACMEBOT UNKNOWN - cannot read {status}: "), lines
    code, lines = check(config, clock=clock)
    assert code == 2 and "unknown=1" in lines[0]                      # a known CRITICAL still wins
    status.unlink()
    edit(config, lambda raw: raw["settings"].update(renewal_dayz=3))
    code, lines = check(config)
    assert code == 3 and lines == [f"ACMEBOT UNKNOWN - {config}: settings.renewal_dayz: unknown option "
                                   "(did you mean 'renewal_days'?)"]


def row(**fields):
    base = {"certificate": "a.example", "key_type": "ecdsa", "state": "valid", "days_left": 50.0,
            "not_after": "2027-01-01T00:00:00+00:00", "renewal_due": False, "renewal_reason": "days rule: renew "
            "from 2026-12-02 00:00 (30 days before expiry)", "rollover_due": False, "expiry_notice": False,
            "last_run": {"result": "issued"}}
    return dict(base, **fields)


def test_check_report_table():
    """check_report on rows as status_rows makes them, for the states the lab
    cannot make in a test's time (renewal due by the days rule but not yet within
    the notice window), and the order of the states: CRITICAL above UNKNOWN above
    WARNING."""
    settings = ab.Settings()
    cases = [
        ([row()], [], 0, "ACMEBOT OK - 1 certificate valid | certificates=1 ok=1 warning=0 critical=0 unknown=0 "
                         "min_days_left=50;;7:"),
        ([row(renewal_due=True)], [], 1, "ACMEBOT WARNING - 1 due | certificates=1 ok=0 warning=1 critical=0 "
                                         "unknown=0 min_days_left=50;;7:"),
        ([row(days_left=3.5, renewal_due=True, expiry_notice=True)], [], 2, "ACMEBOT CRITICAL - 1 expiring |"),
        ([row(renewal_due=True), row(unreadable="cannot read the certificate file /x")], [], 3,
         "ACMEBOT UNKNOWN - 1 unreadable, 1 due |"),
        ([row(state="expired", days_left=-1.0)], ["cannot read /r/status.json: damaged"], 2,
         "ACMEBOT CRITICAL - cannot read /r/status.json: damaged; 1 expired |"),
        ([], [], 0, "ACMEBOT OK - 0 certificates valid | certificates=0 ok=0 warning=0 critical=0 unknown=0"),
    ]
    for rows, problems, code, first in cases:
        got, lines = ab.check_report(rows, problems, settings)
        assert (got, lines[0][:len(first)]) == (code, first), lines
        assert len(lines) == 1 + len(rows) and "\n" not in "".join(lines)
    got, lines = ab.check_report([row(renewal_due=True)], [], settings)
    assert lines[1] == "WARNING: a.example (ecdsa): renewal due (days rule: renew from 2026-12-02 00:00 (30 days " \
                       "before expiry)), valid until 2027-01-01 00:00 UTC"


# -- metrics ---------------------------------------------------------------------------------------

def read_metrics(path):
    """{name: {labels-tuple: value}}, parsed by prometheus_client (which raises on
    a malformed exposition), after a strict check of the line format."""
    text = Path(path).read_text()
    assert text.endswith("\n")
    declared = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:]
            assert kind == "gauge" and name not in declared
            declared.add(name)
            continue
        match = re.match(r'^([a-z_]+)(\{certificate="[^"]+",key_type="(rsa|ecdsa)"\})? (-?[0-9.]+)$', line)
        assert match and match.group(1) in declared, line
    out = {}
    for family in text_string_to_metric_families(text):
        assert family.documentation and family.type == "gauge"
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_metrics_text_escapes_labels_and_keeps_the_last_success():
    rows = [row(certificate='we"ird\\name'), row(certificate="gone", state="missing", renewal_due=True,
                                                   not_after=None, last_run={"result": "failed"})]
    run = {"acmebot_last_run_timestamp_seconds": 2000.5, "acmebot_last_run_exit_code": 3,
           "acmebot_last_run_duration_seconds": 1.25, "acmebot_last_run_failures": 1}
    previous = "acmebot_last_success_timestamp_seconds 1000\n"
    text = ab.metrics_text(rows, dict(run), previous)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, s.labels.get("certificate")): s.value for f in families.values() for s in f.samples}
    assert samples[("acmebot_certificate_present", 'we"ird\\name')] == 1
    assert samples[("acmebot_certificate_present", "gone")] == 0
    assert ("acmebot_certificate_not_after_timestamp_seconds", "gone") not in samples
    assert samples[("acmebot_certificate_last_run_failed", "gone")] == 1
    assert samples[("acmebot_last_success_timestamp_seconds", None)] == 1000
    assert samples[("acmebot_last_run_duration_seconds", None)] == 1.25
    assert 'certificate="we\\"ird\\\\name"' in text
    # a successful run is its own last success; with no earlier one and a failure, none
    ok = ab.metrics_text(rows, dict(run, acmebot_last_run_exit_code=0), previous)
    assert "acmebot_last_success_timestamp_seconds 2000.5\n" in ok
    assert "acmebot_last_success_timestamp_seconds" not in ab.metrics_text(rows, dict(run), "")


def test_metrics_file_after_every_run(lab, tmp_path):
    lab.add_hosts("example.test", "met1", "met2")
    good, bad = "met1.example.test", "met2.example.test"
    textfile = tmp_path / "node-exporter"
    textfile.mkdir()
    path = textfile / "acmebot.prom"
    unserved = tmp_path / "unserved"
    unserved.mkdir()
    config = config_for(tmp_path, lab, {good: {}, bad: {}}, {"metrics_file": str(path)},
                        http_challenges={bad: str(unserved)})
    started = time.time()
    result = run_acmebot(config)
    assert result.returncode == 4, result.stdout + result.stderr
    ended = time.time()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in textfile.iterdir()] == ["acmebot.prom"]       # no temp file left
    metrics = read_metrics(path)
    labels = {name: (("certificate", name), ("key_type", "ecdsa")) for name in (good, bad)}
    not_after = cert_of(default_paths(tmp_path, good, "ecdsa")["certificate"]).not_valid_after_utc.timestamp()
    assert metrics["acmebot_certificate_not_after_timestamp_seconds"] == {labels[good]: not_after}
    assert metrics["acmebot_certificate_present"] == {labels[good]: 1, labels[bad]: 0}
    assert metrics["acmebot_certificate_renewal_due"] == {labels[good]: 0, labels[bad]: 1}
    assert metrics["acmebot_certificate_last_run_failed"] == {labels[good]: 0, labels[bad]: 1}
    assert metrics["acmebot_certificate_expiry_notice"] == {labels[good]: 0, labels[bad]: 0}
    assert metrics["acmebot_certificate_rollover_due"] == {labels[good]: 0, labels[bad]: 0}
    assert metrics["acmebot_last_run_exit_code"] == {(): 4}
    assert metrics["acmebot_last_run_failures"][()] >= 1
    assert started <= metrics["acmebot_last_run_timestamp_seconds"][()] <= ended
    assert 0 < metrics["acmebot_last_run_duration_seconds"][()] <= ended - started
    assert "acmebot_last_success_timestamp_seconds" not in metrics    # never succeeded yet

    edit(config, lambda raw: raw["certificates"].pop(bad))
    assert_ok(run_acmebot(config))
    metrics = read_metrics(path)
    first_success = metrics["acmebot_last_success_timestamp_seconds"][()]
    assert first_success == metrics["acmebot_last_run_timestamp_seconds"][()]
    assert metrics["acmebot_last_run_exit_code"] == {(): 0}
    assert metrics["acmebot_last_run_failures"] == {(): 0}
    assert list(metrics["acmebot_certificate_present"]) == [labels[good]]

    # a failed run (the CA unreachable) still writes the file; the last success stays
    set_url(config, closed_ca())
    result = run_acmebot(config, "--renew")
    assert result.returncode == 3, result.stdout + result.stderr
    metrics = read_metrics(path)
    assert metrics["acmebot_last_run_exit_code"] == {(): 3}
    assert metrics["acmebot_last_success_timestamp_seconds"] == {(): first_success}
    assert metrics["acmebot_last_run_timestamp_seconds"][()] > first_success
    assert metrics["acmebot_certificate_last_run_failed"] == {labels[good]: 1}
    assert stat.S_IMODE(path.stat().st_mode) == 0o644

    # a directory that is not there: one line naming the setting, exit 5
    edit(config, lambda raw: raw["settings"].update(metrics_file=str(tmp_path / "none" / "acmebot.prom")))
    result = run_acmebot(config)
    assert_clean(result)
    assert result.returncode == 5 and "(settings.metrics_file)" in result.stderr, result.stderr
    edit(config, lambda raw: raw["settings"].update(metrics_file="relative.prom"))
    result = run_acmebot(config)
    assert result.returncode == 2 and result.stderr.startswith(
        f"ERROR: {config}: settings.metrics_file: must be null or an absolute path ending in .prom"), result.stderr


# -- notifications ---------------------------------------------------------------------------------

class JsonReceiver:
    """A loopback HTTP server that keeps the JSON bodies Apprise's json:// posts."""

    def __init__(self):
        self.posts = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class Mailbox:
    async def handle_DATA(self, server, session, envelope):
        self.mails.append((envelope.mail_from, envelope.rcpt_tos, envelope.content.decode()))
        return "250 OK"

    def __init__(self):
        self.mails = []


@pytest.fixture
def receiver():
    running = JsonReceiver()
    yield running
    running.stop()


@pytest.fixture
def mailbox():
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    box.port = controller.port
    yield box
    controller.stop()


def hook_calls(record):
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def notify_hook(record):
    return (f"{sys.executable} {HOOK} {record} event={{event}} certificate_name={{certificate_name}} "
            f"key_type={{key_type}} not_after={{not_after}} days_left={{days_left}} problem={{problem}}")


def test_notifications_once_per_state_change(lab, tmp_path, receiver, mailbox):
    lab.add_hosts("example.test", "ntf1")
    name = "ntf1.example.test"
    record = tmp_path / "notify.jsonl"
    urls = [f"json://127.0.0.1:{receiver.port}/acmebot/{TOKEN}",
            f"mailto://127.0.0.1:{mailbox.port}?from=acmebot@example.test&to=admin@example.test"]
    config = config_for(tmp_path, lab, {name: {}}, {"notify_urls": urls}, hooks={"notify": notify_hook(record)})
    assert_ok(run_acmebot(config))
    assert (receiver.posts, mailbox.mails, hook_calls(record)) == ([], [], [])
    serial = cert_of(default_paths(tmp_path, name, "ecdsa")["certificate"]).serial_number

    # a renewal (--renew) with the CA unreachable, twice: one failure
    set_url(config, closed_ca())
    outputs = []
    for _ in range(2):
        result = run_acmebot(config, "--renew", "--debug")
        assert_clean(result)
        assert result.returncode == 3, result.stdout + result.stderr
        outputs.append(result.stdout + result.stderr)
    assert [post["type"] for _, post in receiver.posts] == ["failure"]
    path, post = receiver.posts[0]
    assert path == f"/acmebot/{TOKEN}"
    assert post["title"].endswith(f": certificate {name} (ecdsa) could not be renewed")
    assert "cannot reach the CA" in post["message"] and f"certificate: {name}" in post["message"]
    assert len(mailbox.mails) == 1
    sender, recipients, mail = mailbox.mails[0]
    assert (sender, recipients) == ("acmebot@example.test", ["admin@example.test"])
    assert f"certificate {name} (ecdsa) could not be renewed" in mail and "cannot reach the CA" in mail
    calls = hook_calls(record)
    assert [call["event"] for call in calls] == ["failure"]
    assert calls[0]["certificate_name"] == name and calls[0]["key_type"] == "ecdsa"
    assert "cannot reach the CA" in calls[0]["problem"] and float(calls[0]["days_left"]) > 1000
    assert datetime.datetime.fromisoformat(calls[0]["not_after"]).timestamp() == \
        cert_of(default_paths(tmp_path, name, "ecdsa")["certificate"]).not_valid_after_utc.timestamp()
    state = json.loads((tmp_path / "resource" / "notifications.json").read_text())
    assert state == {"certificates": {f"{name}/ecdsa": {"failed": True}}}
    assert stat.S_IMODE((tmp_path / "resource" / "notifications.json").stat().st_mode) == 0o600

    # the CA back: renewed, one 'recovered'; the next run tells nothing
    set_url(config, lab.directory_url)
    assert_ok(run_acmebot(config, "--renew"))
    assert cert_of(default_paths(tmp_path, name, "ecdsa")["certificate"]).serial_number != serial
    assert [post["type"] for _, post in receiver.posts] == ["failure", "success"]
    assert receiver.posts[1][1]["title"].endswith(f"certificate {name} (ecdsa) is fine again")
    assert len(mailbox.mails) == 2 and "is fine again" in mailbox.mails[1][2]
    assert [call["event"] for call in hook_calls(record)] == ["failure", "recovered"]
    assert hook_calls(record)[1]["problem"] == ""
    assert_ok(run_acmebot(config))
    assert_ok(run_acmebot(config, "--renew"))
    assert (len(receiver.posts), len(mailbox.mails), len(hook_calls(record))) == (2, 2, 2)
    assert json.loads((tmp_path / "resource" / "notifications.json").read_text()) == {"certificates": {}}

    # a revocation is told once, as it happens
    assert_ok(run_acmebot(config, "--revoke", "--reason", "superseded", name))
    assert [post["type"] for _, post in receiver.posts][2:] == ["info"]
    assert receiver.posts[2][1]["title"].endswith(f"certificate {name} (ecdsa) was revoked")
    assert "reason superseded" in receiver.posts[2][1]["message"] and "was revoked" in mailbox.mails[2][2]
    assert [call["event"] for call in hook_calls(record)][2:] == ["revoked"]

    # the token of the json:// URL was never printed nor logged
    log = (tmp_path / "log" / "acmebot.log").read_text()
    for text in (*outputs, log):
        assert TOKEN not in text
    assert "cannot reach the CA" in log


def test_undelivered_notification_is_told_again(lab, tmp_path, receiver):
    lab.add_hosts("example.test", "ntf2")
    name = "ntf2.example.test"
    dead = free_port()
    config = config_for(tmp_path, lab, {name: {}},
                        {"notify_urls": [f"json://127.0.0.1:{dead}/acmebot/{TOKEN}"]})
    assert_ok(run_acmebot(config))
    set_url(config, closed_ca())
    result = run_acmebot(config, "--renew")
    assert_clean(result)
    assert result.returncode == 3
    assert f"notify: the failure notification for {name} (ecdsa) did not reach every notify_urls service" \
        in result.stderr
    assert TOKEN not in result.stdout + result.stderr
    assert not (tmp_path / "resource" / "notifications.json").exists()
    edit(config, lambda raw: raw["settings"].update(notify_urls=[f"json://127.0.0.1:{receiver.port}/x/{TOKEN}"]))
    result = run_acmebot(config, "--renew")
    assert result.returncode == 3 and "did not reach" not in result.stderr
    assert [post["type"] for _, post in receiver.posts] == ["failure"]


def test_expiry_notified_once_per_day_left(lab, short_pebble, tmp_path):
    """Short certificates: the notice window (the last third, 3 s) lies within the
    last day, so the levels are "1" (expires within a day) and "expired"; the log
    still shouts on every run."""
    lab.add_hosts("example.test", "ntf3")
    name = "ntf3.example.test"
    record = tmp_path / "notify.jsonl"
    config = config_for(tmp_path, lab, {name: {}}, {"acme_directory_url": short_pebble.directory_url},
                        hooks={"notify": notify_hook(record)})
    clock = FakeClock(real_sleep=True)
    assert_ok(run_main(config, clock=clock))
    path = default_paths(tmp_path, name, "ecdsa")["certificate"]
    set_url(config, closed_ca())
    cert = set_due(clock, path)
    result = run_main(config, clock=clock)
    assert result.returncode == 3 and "AND COULD NOT BE RENEWED" in result.stderr
    clock.set(cert.not_valid_after_utc + datetime.timedelta(seconds=0.2))
    for _ in range(2):
        result = run_main(config, clock=clock)
        assert result.returncode == 3 and f"CERTIFICATE {name} (ecdsa) EXPIRED" in result.stderr
    calls = hook_calls(record)
    assert {call["event"] for call in calls} == {"expiry"}
    assert len(calls) == 2               # the first failing run came before expiry, then expired
    assert calls[-1]["days_left"].startswith("-") and "cannot reach the CA" in calls[-1]["problem"]
    assert json.loads((tmp_path / "resource" / "notifications.json").read_text()) == \
        {"certificates": {f"{name}/ecdsa": {"expiry": "expired", "failed": True}}}
    set_url(config, short_pebble.directory_url)
    # pebble issues in real time: the renewed certificate is judged at the real time
    clock.set(datetime.datetime.now(datetime.timezone.utc))
    assert_ok(run_main(config, clock=clock))
    assert [call["event"] for call in hook_calls(record)][len(calls):] == ["recovered"]
    assert_ok(run_main(config, clock=clock))          # renewed or not yet due: fine, nothing to tell
    assert len(hook_calls(record)) == len(calls) + 1


def test_notify_urls_config_errors(lab, tmp_path):
    """A missing apprise package and URLs Apprise does not know: one line, exit 2,
    nothing done, the URL (it carries tokens) not printed."""
    lab.add_hosts("example.test", "ntf4")
    name = "ntf4.example.test"
    config = config_for(tmp_path, lab, {name: {}},
                        {"notify_urls": [f"json://127.0.0.1:{free_port()}/{TOKEN}", f"nosuch://{TOKEN}"]})
    result = run_acmebot(config)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"ERROR: {config}: settings.notify_urls[1]: Apprise does not understand this nosuch:// URL " \
                            "(see the Apprise documentation)\n"
    edit(config, lambda raw: raw["settings"].update(notify_urls=["not a url"]))
    result = run_acmebot(config)
    assert result.returncode == 2 and result.stderr.startswith(
        f"ERROR: {config}: settings.notify_urls[0]: must be an Apprise URL")
    # apprise is installed here (CI installs it): a python that cannot import it is
    # made by blocking the import the way Python documents (sys.modules[name] = None)
    edit(config, lambda raw: raw["settings"].update(notify_urls=[f"json://127.0.0.1:{free_port()}/{TOKEN}"]))
    argv, env, cwd = acmebot_command(config)
    blocked = [sys.executable, "-c", "import runpy, sys; sys.modules['apprise'] = None; "
               f"sys.argv = {argv[1:]!r}; runpy.run_path({str(ACMEBOT)!r}, run_name='__main__')"]
    result = subprocess.run(blocked, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)
    assert result.returncode == 2 and result.stdout == "", result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"ERROR: {config}: settings.notify_urls: needs the Python package apprise")
    assert "pipx inject acmebot apprise" in lines[0] and "pip install apprise" in lines[0]
    assert not (tmp_path / "resource").exists() or not any((tmp_path / "resource").iterdir())
    assert not (tmp_path / "certs").exists()


# -- the journal -----------------------------------------------------------------------------------

def run_to_journal(config, *args, inode=None):
    """acmebot with stdout and stderr on one pipe, as systemd connects both to the
    journal, and JOURNAL_STREAM naming that pipe (or another inode)."""
    read, write = os.pipe()
    st = os.fstat(write)
    argv, env, cwd = acmebot_command(config, *args,
                                     env={"JOURNAL_STREAM": f"{st.st_dev}:{inode or st.st_ino}"})
    with os.fdopen(read, "rb") as out:
        process = subprocess.Popen(argv, stdout=write, stderr=write, env=env, cwd=cwd)
        os.close(write)
        text = out.read().decode()
    assert process.wait(timeout=300) is not None
    return process.returncode, text


def test_journal_priorities(lab, tmp_path):
    lab.add_hosts("example.test", "jrn1", "jrn2")
    good, bad = "jrn1.example.test", "jrn2.example.test"
    unserved = tmp_path / "unserved"
    unserved.mkdir()
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the log directory should be\n")
    config = config_for(tmp_path, lab, {good: {}, bad: {}}, http_challenges={bad: str(unserved)},
                        directories={"log": str(blocker / "log")})
    code, text = run_to_journal(config, "--verbose")
    assert code == 4, text
    lines = text.splitlines()
    assert lines and all(re.match(r"^<[3467]>", line) for line in lines), text
    assert any(line.startswith(f"<6>Issued certificate {good}") for line in lines), text
    assert any(line.startswith("<3>ERROR: ") and bad in line for line in lines), text
    assert any(line.startswith("<4>WARNING: cannot open log file ") for line in lines), text
    assert any(line.startswith("<7>") and "certs:" in line for line in lines), text      # --verbose: the phase tree
    # JOURNAL_STREAM from a parent whose stream this is not: no prefixes
    code, text = run_to_journal(config, inode=1)
    assert code == 4
    assert not any(re.match(r"^<\d>", line) for line in text.splitlines()), text
    assert "WARNING: cannot open log file" in text
