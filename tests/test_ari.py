"""Renewal by ARI (RFC 9773) against a real ARI server: acme2certifier on loopback
(pebble 2.4 has no renewalInfo).  acme2certifier runs with challenge validation
off, but acmebot still answers the dns-01 challenges through the lab's BIND."""

import datetime
import json
from pathlib import Path

from cryptography import x509

from lab.a2c import a2c, ari_cert_id, require_a2c_python, start_a2c  # noqa: F401 (fixture)
from conftest import make_config, run_acmebot
from lab.inprocess import FakeClock, run_main
from lab import edit_key_state, forget_issuers, load_acmebot_config
from test_units import ab
from test_issue import assert_clean, assert_ok, default_paths


def a2c_config(tmp_path, lab, server, host):
    lab.add_hosts("example.test", host)
    name = f"{host}.example.test"
    config = make_config(tmp_path, lab, {
        "settings": {"acme_directory_url": server.directory_url, "acme_ca_bundle": None, "key_size": 0},
        "certificates": {name: {}}})
    return config, name


def ari_windows(config):
    """acmebot's ARI state: AriWindow (next_check, start, end, chosen) by ARI certificate id."""
    return ab.AriState.load(load_acmebot_config(config)).certificates


def when(text):
    return datetime.datetime.fromisoformat(text)


def test_ari_window_is_asked_when_due_and_retry_after_is_kept(lab, a2c, tmp_path):
    config, name = a2c_config(tmp_path, lab, a2c, "ari1")
    clock = FakeClock(real_sleep=True)          # in process: a day passes by the clock
    assert_ok(run_main(config, clock=clock))
    pem = Path(default_paths(tmp_path, name, "ecdsa")["certificate"]).read_bytes()
    cert_id = ari_cert_id(pem)
    # a new certificate: the first check waits a day, no request now
    entry = ari_windows(config)[cert_id]
    assert entry.next_check and not (entry.start or entry.end or entry.chosen)
    clock.advance(hours=23)
    quiet = run_main(config, "--detail", clock=clock)
    assert_ok(quiet)
    assert "renewalinfo" not in quiet.stdout.lower() and ari_windows(config)[cert_id] == entry
    clock.advance(hours=1, minutes=1)
    before = clock()
    result = run_main(config, "--verbose", clock=clock)
    assert_ok(result)
    assert "nothing to do" in result.stdout and "ARI for" in result.stdout
    entry = ari_windows(config)[cert_id]
    expected, retry_after = a2c.get_renewal_info(pem)
    assert entry.start == when(expected["suggestedWindow"]["start"].replace("Z", "+00:00"))
    assert entry.start <= entry.chosen <= entry.end
    # Retry-After (3600 s) decides the next check
    waited = (entry.next_check - before).total_seconds()
    assert retry_after == 3600 and 3590 <= waited <= 3700
    # not due again: no renewalInfo request at all
    clock.advance(minutes=59)
    quiet = run_main(config, "--detail", clock=clock)
    assert_ok(quiet)
    assert "renewal-info" not in quiet.stdout.lower() and "renewalinfo" not in quiet.stdout.lower()
    assert ari_windows(config)[cert_id] == entry


def test_ari_window_now_renews_with_replaces(lab, tmp_path):
    require_a2c_python()
    server = start_a2c(tmp_path / "a2c", name="a2c-force", extra_config={"Renewalinfo": {"renewal_force": True}})
    config, name = a2c_config(tmp_path, lab, server, "ari2")
    clock = FakeClock(real_sleep=True)
    assert_ok(run_main(config, clock=clock))
    path = default_paths(tmp_path, name, "ecdsa")["certificate"]
    old = Path(path).read_bytes()
    clock.advance(days=1, minutes=1)             # the first check is due a day after issuance
    since = len(server.requests)
    result = run_main(config, clock=clock)
    assert_ok(result)
    assert "renewal window (ARI)" in result.stdout or "renewal window has passed" in result.stdout
    new = Path(path).read_bytes()
    assert x509.load_pem_x509_certificate(new).serial_number != x509.load_pem_x509_certificate(old).serial_number
    orders = server.new_order_payloads(since=since)
    assert [o.get("replaces") for o in orders] == [ari_cert_id(old)]
    # the old certificate's state is gone, the new one waits a day
    state = ari_windows(config)
    new_entry = state[ari_cert_id(new)]
    assert ari_cert_id(old) not in state and new_entry.next_check and new_entry.start is None


def test_ari_failure_falls_back_to_the_days_rule_with_a_warning(lab, a2c, tmp_path):
    # a certificate from pebble, then the config moves to acme2certifier, which does
    # not know it: renewalInfo answers 404.  A change of CA reissues every certificate
    # whose key state records the CA that issued it; a state from before that record
    # (removed here) keeps its certificate, and asks the new CA about it.
    lab.add_hosts("example.test", "ari3")
    name = "ari3.example.test"
    config = make_config(tmp_path, lab, {"settings": {"key_size": 0}, "certificates": {name: {}}})
    assert_ok(run_acmebot(config))
    serial = x509.load_pem_x509_certificate(
        Path(default_paths(tmp_path, name, "ecdsa")["certificate"]).read_bytes()).serial_number
    edit_key_state(config, name, forget_issuers)
    raw = json.loads(config.read_text())
    raw["settings"].update({"acme_directory_url": a2c.directory_url, "acme_ca_bundle": None})
    config.write_text(json.dumps(raw))
    result = run_acmebot(config)
    assert_clean(result)
    assert result.returncode == 0
    assert "ARI" in result.stderr and "using the days rule" in result.stderr
    assert x509.load_pem_x509_certificate(
        Path(default_paths(tmp_path, name, "ecdsa")["certificate"]).read_bytes()).serial_number == serial
