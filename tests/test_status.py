"""acmebot --status (and --status --json): every certificate's state from what is
on disk, with no network request and no file changed."""

import datetime
import json
from pathlib import Path

from cryptography import x509

from conftest import make_config
from lab import free_port
from lab.inprocess import FakeClock, run_main
from test_issue import assert_clean, assert_ok, default_paths

SHORT = 9   # seconds of validity from the short pebble: due in the last third


def snapshot_all(tmp_path):
    """Every file under tmp_path (the log and the run lock included)."""
    out = {}
    for path in Path(tmp_path).rglob("*"):
        if path.is_file():
            st = path.stat()
            out[str(path)] = (st.st_mtime_ns, st.st_mode, path.read_bytes())
    return out


def edit(config, change):
    raw = json.loads(config.read_text())
    change(raw)
    config.write_text(json.dumps(raw, indent=2))


def set_url(config, url):
    edit(config, lambda raw: raw["settings"].update(acme_directory_url=url))


def not_after(tmp_path, name):
    path = default_paths(tmp_path, name, "ecdsa")["certificate"]
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc


def test_status_shows_every_state_without_network_or_changes(lab, tmp_path):
    """In process, with a clock: "stroll" is issued 800 days ago, the others now;
    --status runs when "stexp" (a 9-second certificate) has expired and
    "stdue" (a 12-second one, issued after it) is in the last third of its life."""
    short = lab.pebbles.get("caf-short") or lab.start_pebble(
        "caf-short", {"certificateValidityPeriod": SHORT}, {"PEBBLE_AUTHZREUSE": "0"})
    longer = lab.pebbles.get("short") or lab.start_pebble("short", {"certificateValidityPeriod": 12})
    hosts = ["stvalid", "stroll", "stfail", "stexp", "stdue", "stnew"]
    lab.add_hosts("example.test", *hosts)
    valid, roll, fail, expired, due, new = (f"{h}.example.test" for h in hosts)
    unserved = tmp_path / "unserved"
    unserved.mkdir()
    config = make_config(tmp_path, lab, {
        "settings": {"key_size": 0, "acme_directory_url": short.directory_url},
        "http_challenges": {fail: str(unserved)},          # pebble gets a 404: http-01 fails
        "certificates": {name: {} for name in (valid, roll, fail, expired, due)}})

    clock = FakeClock(real_sleep=True)
    clock.advance(days=-800)                             # the backup of `roll` too old: expiration_days is 730
    set_url(config, lab.directory_url)
    assert_ok(run_main(config, roll, clock=clock))
    clock.set(datetime.datetime.now(datetime.timezone.utc))
    set_url(config, short.directory_url)
    assert_ok(run_main(config, expired, clock=clock))
    set_url(config, lab.directory_url)
    failed = run_main(config, valid, roll, fail, clock=clock)
    assert_clean(failed)
    assert failed.returncode == 4, failed.stdout + failed.stderr
    set_url(config, longer.directory_url)
    assert_ok(run_main(config, due, clock=clock))

    # a new certificate, never issued; the CA unreachable
    edit(config, lambda raw: raw["certificates"].update({new: {}}))
    set_url(config, f"https://127.0.0.1:{free_port()}/dir")
    clock.set(not_after(tmp_path, due) - datetime.timedelta(seconds=0.5))
    assert clock() > not_after(tmp_path, expired)

    before = snapshot_all(tmp_path)
    result = run_main(config, "--status", "--json", clock=clock)
    assert_clean(result)
    assert result.returncode == 0 and result.stderr == ""
    rows = {row["certificate"]: row for row in json.loads(result.stdout)["certificates"]}
    assert clock() < not_after(tmp_path, due)
    assert snapshot_all(tmp_path) == before

    assert set(rows) == {valid, roll, fail, expired, due, new}
    for name, row in rows.items():
        assert row["key_type"] == "ecdsa" and row["names"] == [name] and row["key"] == name

    row = rows[valid]
    assert row["state"] == "valid" and row["renewal_due"] is False and row["rollover_due"] is False
    assert row["days_left"] > 1000 and "days rule" in row["renewal_reason"]
    assert row["issuer"].startswith("Pebble Intermediate CA")
    cert = x509.load_pem_x509_certificate(default_paths(tmp_path, valid, "ecdsa")["certificate"].read_bytes())
    assert row["serial"] == f"{cert.serial_number:x}"
    assert row["not_after"].startswith(f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M}")
    assert row["last_run"]["result"] == "issued"
    assert row["key_age_days"] < 0.01 and row["backup_age_days"] < 0.01

    row = rows[roll]
    assert row["state"] == "valid" and row["rollover_due"] is True and row["backup_age_days"] >= 800

    row = rows[fail]
    assert row["state"] == "missing" and row["renewal_due"] is True
    assert row["last_run"]["result"] == "failed" and fail in row["last_run"]["problem"]

    row = rows[new]
    assert row["state"] == "missing" and row["renewal_due"] is True and row["last_run"] is None
    assert row["key_age_days"] is None and row["rollover_due"] is False

    row = rows[due]
    assert row["state"] == "valid" and row["renewal_due"] is True and row["days_left"] == 0   # rounded
    assert row["last_run"]["result"] == "issued" and row["rollover_due"] is False

    row = rows[expired]
    assert row["state"] == "expired" and row["renewal_due"] is True and row["days_left"] <= 0

    # the table: one line per certificate, then the names
    table = run_main(config, "--status", clock=clock)
    assert_clean(table)
    assert table.returncode == 0 and table.stderr == ""
    assert snapshot_all(tmp_path) == before
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["CERTIFICATE", "TYPE", "ISSUER", "NOT", "AFTER", "DAYS", "RENEWAL", "KEY", "AGE",
                                "ROLLOVER", "LAST", "RUN"]
    line = {name: next(line for line in lines[1:] if line.startswith(name + " ")) for name in rows}
    assert "\033[" not in table.stdout                    # not a terminal: no colour
    assert "failed: " in line[fail]
    assert "due: days rule" in line[due] and "due: days rule" in line[expired]
    assert "due: no certificate yet" in line[new]
    assert " due " in line[roll] and "due:" not in line[roll]
    assert "due" not in line[valid] and "issued" in line[valid]
    for name in rows:
        assert f"  {name} (ecdsa): {name}" in lines

    # positional names select
    one = run_main(config, "--status", "--json", valid, clock=clock)
    assert [row["certificate"] for row in json.loads(one.stdout)["certificates"]] == [valid]
    assert snapshot_all(tmp_path) == before
