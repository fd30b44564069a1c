"""dns-persist-01 (draft-ietf-acme-dns-persist) against acme2certifier with its
dns-persist-01 validator switched on (challenge validation NOT disabled), resolving
through the lab's BIND: acmebot publishes `_validation-persist.<name>` once through
the zone's RFC 2136 key, the CA checks it on every authorization, and later runs
change nothing in DNS.

a2c's resolver takes addresses only (`dns_server_list`, no port), so a forwarding
BIND listens on 127.0.0.1:53 of the test network namespace and forwards the lab's
zones to the lab's authoritative BIND."""

import json
import shutil
from pathlib import Path

import dns.message
import dns.query
import pytest

from lab.a2c import require_a2c_python, start_a2c
from conftest import make_config, run_acmebot
from lab import ZONES, Server, named_options
from test_issue import assert_clean, assert_ok, default_paths

ISSUER = "ca.example.test"


@pytest.fixture(scope="module")
def resolver53(lab):
    """A recursive BIND on 127.0.0.1:53 forwarding the lab's zones to the lab's BIND."""
    directory = lab.root / "resolver53"
    directory.mkdir(mode=0o755)
    forwards = "".join(
        f'zone "{zone}" {{ type forward; forward only; forwarders {{ 127.0.0.1 port {lab.dns_port}; }}; }};\n'
        for zone in ZONES)
    conf = directory / "named.conf"
    conf.write_text(named_options(directory, 53, recursive=True) + forwards)
    server = Server("resolver53", ["named", "-g", "-c", conf], directory / "named.log", cwd=directory)

    def ready():
        request = dns.message.make_query("example.test", "SOA")
        try:
            return bool(dns.query.udp(request, "127.0.0.1", port=53, timeout=0.5).answer)
        except Exception:  # noqa: BLE001 - not up yet
            return False
    server.wait_ready(ready)
    yield "127.0.0.1"
    server.stop()


@pytest.fixture(scope="module")
def persist_ca(lab, resolver53, tmp_path_factory):
    """acme2certifier offering dns-persist-01 (wildcards allowed) and validating it."""
    require_a2c_python()
    return start_a2c(tmp_path_factory.mktemp("a2c-persist"), name="a2c-persist", debug=True, extra_config={
        "DEFAULT": {"dns_server_list": [resolver53]},
        "Directory": {"caaidentities": [ISSUER]},
        "Challenge": {"challenge_validation_disable": False, "dns_persist_01_support": True,
                      "dns_persist_allow_policy_wildcard": True, "dns_validation_pause_timer": 0},
    })


def persist_config(tmp_path, lab, server, certificates, dns_persist=None):
    return make_config(tmp_path, lab, {
        "settings": {"acme_directory_url": server.directory_url, "acme_ca_bundle": None, "key_size": 0},
        "certificates": certificates,
        "dns_persist": dns_persist or {"zones": ["example.test"]},
    })


def account_uri(tmp_path):
    """The account URL acmebot registered (resource/registration.json or the like)."""
    for path in (tmp_path / "resource").rglob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("uri"), str) and "/acct/" in data["uri"]:
            return data["uri"]
    raise AssertionError("no account URL found under resource/")


def soa_serial(lab, zone="example.test"):
    return lab.query(zone, "SOA")[0].serial


def challenge_posts(server, since):
    """(challenge type, payload) of every POST to a challenge URL since `since`."""
    types = {}
    for row in server.db_rows("SELECT challenge.name AS name, challenge.type AS type FROM challenge"):
        types[row["name"]] = row["type"]
    out = []
    for entry in server.requests[since:]:
        if "/chall/" in (entry["path"] or "") and entry["payload"] is not None:
            out.append((types.get(entry["path"].rstrip("/").rsplit("/", 1)[-1]), entry["payload"]))
    return out


def test_record_published_once_then_renewals_change_no_dns(lab, persist_ca, tmp_path):
    lab.add_hosts("example.test", "persist1")
    name = "persist1.example.test"
    config = persist_config(tmp_path, lab, persist_ca,
                            {name: {"alt_names": {"example.test": ["persist1", "*.persist1"]}}})
    since = len(persist_ca.requests)
    first = run_acmebot(config, "--verbose")
    assert_ok(first)
    uri = account_uri(tmp_path)
    record = f"{ISSUER}; accounturi={uri}; policy=wildcard"
    assert lab.txt(f"_validation-persist.{name}") == [record]
    assert f"Published the dns-persist-01 record _validation-persist.{name} in zone example.test" in first.stdout
    assert lab.txt(f"_acme-challenge.{name}") == []
    # both authorizations (the name and its wildcard) answered by dns-persist-01 with {}
    posts = challenge_posts(persist_ca, since)
    assert posts and all(kind == "dns-persist-01" and payload == {} for kind, payload in posts), posts
    # a2c's validator read the record through the resolver and accepted it
    validator_log = persist_ca.log_path.read_text()
    assert f"_parse_issue_value(): Parsed record with issuer: {ISSUER} and params: " in validator_log
    assert f"'accounturi': '{uri}', 'policy': 'wildcard'" in validator_log
    assert persist_ca.db_rows("SELECT COUNT(*) AS n FROM challenge WHERE type = 'dns-persist-01' "
                              "AND status_id = (SELECT id FROM status WHERE name = 'valid')")[0]["n"] >= 2
    assert Path(default_paths(tmp_path, name, "ecdsa")["certificate"]).exists()    # key_size 0: no RSA

    # a forced renewal: issued again, and the zone does not change at all
    serial = soa_serial(lab)
    cert_path = Path(default_paths(tmp_path, name, "ecdsa")["certificate"])
    old = cert_path.read_bytes()
    since = len(persist_ca.requests)
    again = run_acmebot(config, "--renew", "--detail")
    assert_ok(again)
    assert cert_path.read_bytes() != old
    assert "DNS UPDATE" not in again.stdout and "Published" not in again.stdout
    assert soa_serial(lab) == serial
    assert lab.txt(f"_validation-persist.{name}") == [record]
    posts = challenge_posts(persist_ca, since)
    assert posts and all(kind == "dns-persist-01" and payload == {} for kind, payload in posts), posts


def test_zone_without_route_prints_the_record_and_orders_nothing(lab, persist_ca, tmp_path):
    """local.test has no zone_update_keys entry: acmebot prints the record to add and
    exits 4 before any newOrder; once the admin adds it, the next run issues."""
    lab.add_hosts("local.test", "persist2")
    name = "persist2.local.test"
    config = persist_config(tmp_path, lab, persist_ca, {name: {"alt_names": {"local.test": ["persist2"]}}},
                            {"zones": ["local.test"], "issuer_domain_name": ISSUER})
    since = len(persist_ca.requests)
    result = run_acmebot(config)
    assert_clean(result)
    assert result.returncode == 4, result.stdout + result.stderr
    assert persist_ca.new_order_payloads(since=since) == []
    uri = account_uri(tmp_path)
    value = f"{ISSUER}; accounturi={uri}"
    line = f'_validation-persist.{name}. 3600 IN TXT "{value}"'
    assert line in result.stderr
    assert "zone local.test has no zone_update_keys entry" in result.stderr
    assert lab.txt(f"_validation-persist.{name}") == []
    assert not Path(default_paths(tmp_path, name, "ecdsa")["certificate"]).exists()

    # the admin adds the record by hand (here with the lab's own key for local.test)
    update = lab.update("local.test")
    update.add(f"_validation-persist.{name}.", 3600, "TXT", f'"{value}"')
    lab.send_update(update)
    assert_ok(run_acmebot(config))
    assert Path(default_paths(tmp_path, name, "ecdsa")["certificate"]).exists()


@pytest.mark.parametrize("section, message", [
    ([], "dns_persist: must be an object"),
    ({}, "dns_persist.zones: must be a non-empty list of zone names"),
    ({"zones": []}, "dns_persist.zones: must be a non-empty list of zone names"),
    ({"zones": "example.test"}, "dns_persist.zones: must be a non-empty list of zone names"),
    ({"zones": [7]}, "dns_persist.zones[0]: must be a zone name, got 7"),
    ({"zones": ["*.example.test"]}, "dns_persist.zones[0]:"),
    ({"zones": ["example.test"], "issuer_domain_name": 3}, "dns_persist.issuer_domain_name: must be a domain name"),
    ({"zones": ["example.test"], "issuer_domain_name": "bad name"}, "dns_persist.issuer_domain_name:"),
    ({"zones": ["example.test"], "issuer": "ca.test"}, "dns_persist.issuer: unknown option"),
])
def test_config_errors(lab, tmp_path, section, message):
    config = make_config(tmp_path, lab, {"certificates": {"cfg.example.test": {}}, "dns_persist": section})
    before = sorted(p for p in tmp_path.rglob("*"))
    result = run_acmebot(config)
    assert_clean(result)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_issuer_the_ca_does_not_accept_is_refused_before_answering(lab, persist_ca, tmp_path):
    """The record names dns_persist.issuer_domain_name; a CA whose challenge accepts
    other issuer domain names gets no answer, and the message says what to set."""
    lab.add_hosts("example.test", "persist3")
    name = "persist3.example.test"
    config = persist_config(tmp_path, lab, persist_ca, {name: {}},
                            {"zones": ["example.test"], "issuer_domain_name": "other-ca.example.test"})
    since = len(persist_ca.requests)
    result = run_acmebot(config)
    assert_clean(result)
    assert result.returncode == 4, result.stdout + result.stderr
    assert (f"the CA's dns-persist-01 challenge accepts the issuer domain names '{ISSUER}', "
            "not other-ca.example.test: set dns_persist.issuer_domain_name") in result.stderr
    assert challenge_posts(persist_ca, since) == []
    uri = account_uri(tmp_path)
    assert lab.txt(f"_validation-persist.{name}") == [f"other-ca.example.test; accounturi={uri}"]
    assert not Path(default_paths(tmp_path, name, "ecdsa")["certificate"]).exists()


@pytest.mark.parametrize("text, wildcard, expected", [
    ("ca.test; accounturi=https://ca/acct/1", False, True),
    ("CA.test. ;AccountURI=https://ca/acct/1 ; policy=Wildcard", True, True),
    ("ca.test; accounturi=https://ca/acct/1", True, False),          # no policy=wildcard
    ("ca.test; accounturi=https://ca/acct/2", False, False),         # another account
    ("other.test; accounturi=https://ca/acct/1", False, False),      # another CA
    ("ca.test; accounturi=https://ca/acct/1; junk", False, False),   # malformed parameter
    ("ca.test; accounturi=https://ca/acct/1; persistUntil=1", False, False),    # expired
    ("ca.test; accounturi=https://ca/acct/1; persistuntil=99999999999", False, True),
    ("accounturi=https://ca/acct/1", False, False),                  # no issuer
])
def test_record_matching_follows_the_draft(text, wildcard, expected):
    from test_units import ab
    assert ab.persist_record_matches(text, "ca.test", "https://ca/acct/1", wildcard) is expected


def test_follower_answers_dns_persist_with_the_masters_record(lab, persist_ca, tmp_path):
    """The master publishes the record for the names of its authorizations; a follower
    (no update key, the master's account) answers its own fresh authorizations -- a2c
    reuses none -- by dns-persist-01, with no DNS change."""
    lab.add_hosts("example.test", "pfollow")
    name = "pfollow.example.test"
    master_dir, follower_dir = tmp_path / "master", tmp_path / "follower"
    master_dir.mkdir()
    follower_dir.mkdir()
    master = persist_config(master_dir, lab, persist_ca, {})
    raw = json.loads(master.read_text())
    raw.pop("certificates")
    raw["authorizations"] = {"example.test": ["pfollow"]}
    master.write_text(json.dumps(raw))
    assert_ok(run_acmebot(master))
    uri = account_uri(master_dir)
    assert lab.txt(f"_validation-persist.{name}") == [f"{ISSUER}; accounturi={uri}"]

    follower = persist_config(follower_dir, lab, persist_ca, {name: {}})
    raw = json.loads(follower.read_text())
    raw.pop("zone_update_keys")
    raw["settings"].update({"follower_mode": True, "reload_zone_command": None})
    follower.write_text(json.dumps(raw))
    shutil.copytree(master_dir / "resource", follower_dir / "resource", dirs_exist_ok=True)
    serial = soa_serial(lab)
    since = len(persist_ca.requests)
    result = run_acmebot(follower, "--detail")
    assert_ok(result)
    assert Path(default_paths(follower_dir, name, "ecdsa")["certificate"]).exists()
    posts = challenge_posts(persist_ca, since)
    assert [kind for kind, _ in posts] == ["dns-persist-01"] and posts[0][1] == {}
    assert soa_serial(lab) == serial and "DNS UPDATE" not in result.stdout


def test_ca_without_dns_persist_says_so(lab, tmp_path):
    """pebble 2.4 offers no dns-persist-01 (and names no caaIdentities): without an
    issuer_domain_name nothing is ordered; with one, the order's authorization is
    refused with a message naming what the CA offers."""
    lab.add_hosts("example.test", "persist4")
    name = "persist4.example.test"
    config = make_config(tmp_path, lab, {"certificates": {name: {}}, "dns_persist": {"zones": ["example.test"]}})
    result = run_acmebot(config)
    assert_clean(result)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "the CA's directory names no caaIdentities" in result.stderr
    assert "set dns_persist.issuer_domain_name" in result.stderr
    assert lab.txt(f"_validation-persist.{name}") == []

    config = make_config(tmp_path, lab, {"certificates": {name: {}},
                                         "dns_persist": {"zones": ["example.test"], "issuer_domain_name": ISSUER}})
    result = run_acmebot(config)
    assert_clean(result)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "the CA offers no dns-persist-01 challenge for it (only " in result.stderr
    assert "remove its zone from dns_persist.zones" in result.stderr
    assert lab.txt(f"_acme-challenge.{name}") == []
