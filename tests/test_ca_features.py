"""What acmebot does with a CA's optional features (issue #5), against real servers:
profiles (acme2certifier), external account binding, IP address certificates
(RFC 8738), alternate chains, account key change and deactivation, badNonce,
503/429 with Retry-After (through tests/lab/ca_proxy.py), and the loud expiry notice.

Every test has its own host names; extra pebbles are started once per session
under names starting with "caf-".
"""

import base64
import datetime
import json
import re
import secrets
import sys
from pathlib import Path

import josepy
import pytest
from acme import client as acme_client
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from lab.a2c import a2c  # noqa: F401 (fixture)
from lab.ca_proxy import CAProxy, problem
from lab.inprocess import FakeClock, run_main
from conftest import make_config, run_acmebot
from lab import free_port
from test_issue import (assert_clean, assert_ok, cert_blocks, challenge_dir_files, check_issued, default_paths,
                        served_challenges, snapshot, verify_chain)

HOOK = Path(__file__).resolve().parent / "lab" / "hook_record.py"


# -- helpers -----------------------------------------------------------------------------------------

def pebble(lab, name, extra_config=None, extra_env=None):
    return lab.pebbles.get(name) or lab.start_pebble(name, extra_config, extra_env)


def cert_of(path):
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def edit(config, change):
    raw = json.loads(config.read_text())
    change(raw)
    config.write_text(json.dumps(raw, indent=2))


def cn(name):
    return [a.value for a in name.get_attributes_for_oid(NameOID.COMMON_NAME)][0]


def account_files(tmp_path):
    resource = tmp_path / "resource"
    return {p.name: p.read_bytes() for p in (resource / "client_key.pem", resource / "registration.json")
            if p.exists()}


def registration(tmp_path):
    return json.loads((tmp_path / "resource" / "registration.json").read_text())


def account_client(directory_url, ca_bundle, key_pem, uri=None):
    """An acme library client signing with an account key acmebot wrote."""
    key = serialization.load_pem_private_key(key_pem, None)
    regr = messages.RegistrationResource(uri=uri, body=messages.Registration()) if uri else None
    net = acme_client.ClientNetwork(josepy.JWKEC(key=key), account=regr, alg=josepy.ES256,
                                    verify_ssl=ca_bundle, user_agent="acmebot-tests")
    return acme_client.ClientV2(acme_client.ClientV2.get_directory(directory_url, net), net), regr


def ecdsa_config(tmp_path, lab, certificates, settings=None, **more):
    overrides = {"settings": dict({"key_size": 0}, **(settings or {})), "certificates": certificates}
    overrides.update(more)
    return make_config(tmp_path, lab, overrides)


def sans(cert):
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(ext.get_values_for_type(x509.DNSName)), sorted(map(str, ext.get_values_for_type(x509.IPAddress)))


# -- profiles ------------------------------------------------------------------------------------------

def a2c_profile_config(tmp_path, lab, server, host, profile):
    lab.add_hosts("example.test", host)
    name = f"{host}.example.test"
    config = ecdsa_config(tmp_path, lab, {name: {"profile": profile}},
                          {"acme_directory_url": server.directory_url, "acme_ca_bundle": None})
    return config, name


def test_profile_reaches_the_ca_and_a_changed_profile_reissues(lab, a2c, tmp_path):  # noqa: F811
    config, name = a2c_profile_config(tmp_path, lab, a2c, "prof1", "shortlived")
    since = len(a2c.requests)
    assert_ok(run_acmebot(config))
    payloads = a2c.new_order_payloads(since=since)
    assert [p.get("profile") for p in payloads] == ["shortlived"]
    assert payloads[0]["identifiers"] == [{"type": "dns", "value": name}]
    path = default_paths(tmp_path, name, "ecdsa")["certificate"]
    first = cert_of(path).serial_number
    assert sans(cert_of(path)) == ([name], [])

    same = run_acmebot(config, "--verbose")
    assert_ok(same)
    assert "nothing to do" in same.stdout

    edit(config, lambda raw: raw["certificates"][name].update(profile="classic"))
    since = len(a2c.requests)
    changed = run_acmebot(config, "--verbose")
    assert_ok(changed)
    assert "profile changed to classic" in changed.stdout
    assert [p.get("profile") for p in a2c.new_order_payloads(since=since)] == ["classic"]
    assert cert_of(path).serial_number != first

    # back to no profile at all: reissued once more, with no profile field
    edit(config, lambda raw: raw["certificates"][name].pop("profile"))
    since = len(a2c.requests)
    default = run_acmebot(config, "--verbose")
    assert_ok(default)
    assert "profile changed to the default" in default.stdout
    assert ["profile" in p for p in a2c.new_order_payloads(since=since)] == [False]


def test_profile_from_settings(lab, a2c, tmp_path):  # noqa: F811
    lab.add_hosts("example.test", "prof2")
    name = "prof2.example.test"
    config = ecdsa_config(tmp_path, lab, {name: {}}, {"acme_directory_url": a2c.directory_url,
                                                     "acme_ca_bundle": None, "profile": "shortlived"})
    since = len(a2c.requests)
    assert_ok(run_acmebot(config))
    assert [p.get("profile") for p in a2c.new_order_payloads(since=since)] == ["shortlived"]


def test_unknown_profile_names_the_offered_ones_and_writes_nothing(lab, a2c, tmp_path):  # noqa: F811
    config, name = a2c_profile_config(tmp_path, lab, a2c, "prof3", "gold")
    since = len(a2c.requests)
    result = run_acmebot(config)
    assert_clean(result)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "profile 'gold'" in result.stderr and "classic, shortlived" in result.stderr
    assert a2c.new_order_payloads(since=since) == []       # refused before asking the CA
    assert not default_paths(tmp_path, name, "ecdsa")["certificate"].exists()
    assert not default_paths(tmp_path, name, "ecdsa")["key"].exists()


def test_profile_with_a_ca_without_profiles(lab, tmp_path):
    lab.add_hosts("example.test", "prof4")
    name = "prof4.example.test"
    config = ecdsa_config(tmp_path, lab, {name: {"profile": "classic"}})
    result = run_acmebot(config)
    assert_clean(result)
    assert result.returncode == 3
    assert "profile 'classic'" in result.stderr and "no profiles at all" in result.stderr
    assert not default_paths(tmp_path, name, "ecdsa")["certificate"].exists()


# -- external account binding --------------------------------------------------------------------------

EAB_KID = "kid-1"
EAB_KEY = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


@pytest.fixture(scope="module")
def eab_pebble(lab):
    return pebble(lab, "caf-eab", {"externalAccountBindingRequired": True,
                                   "externalAccountMACKeys": {EAB_KID: EAB_KEY}})


def test_eab_required_but_not_configured(lab, eab_pebble, tmp_path):
    lab.add_hosts("example.test", "eab0")
    config = ecdsa_config(tmp_path, lab, {"eab0.example.test": {}}, {"acme_directory_url": eab_pebble.directory_url})
    result = run_acmebot(config)
    assert_clean(result)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "external account binding" in result.stderr and "account.eab_kid" in result.stderr
    assert account_files(tmp_path) == {}
    assert not default_paths(tmp_path, "eab0.example.test", "ecdsa")["certificate"].exists()


def test_eab_with_a_wrong_hmac_key_is_refused_by_the_ca(lab, eab_pebble, tmp_path):
    lab.add_hosts("example.test", "eabbad")
    wrong = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    config = ecdsa_config(tmp_path, lab, {"eabbad.example.test": {}},
                          {"acme_directory_url": eab_pebble.directory_url},
                          account={"email": "admin@example.test", "eab_kid": EAB_KID, "eab_hmac_key": wrong})
    result = run_acmebot(config, "--detail")
    assert_clean(result)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "registering the ACME account" in result.stderr
    assert wrong not in result.stdout + result.stderr
    assert account_files(tmp_path) == {}


def test_eab_registers_issues_and_survives_later_account_updates(lab, eab_pebble, tmp_path):
    lab.add_hosts("example.test", "eab1")
    name = "eab1.example.test"
    config = ecdsa_config(tmp_path, lab, {name: {}}, {"acme_directory_url": eab_pebble.directory_url},
                          account={"email": "admin@example.test", "eab_kid": EAB_KID, "eab_hmac_key": EAB_KEY})
    first = run_acmebot(config, "--detail")
    assert_ok(first)
    assert "registered ACME account" in first.stdout
    check_issued(lab, default_paths(tmp_path, name, "ecdsa"), "ecdsa", [name], pebble=eab_pebble)
    stored = registration(tmp_path)
    assert "externalAccountBinding" not in json.dumps(stored)
    uri = stored["uri"]

    second = run_acmebot(config, "--detail")
    assert_ok(second)
    assert "registered ACME account" not in second.stdout

    # certbot issue 9550: an account update after an EAB registration
    edit(config, lambda raw: raw["account"].update(email="other@example.test"))
    third = run_acmebot(config, "--detail", "--renew")
    assert_ok(third)
    assert "updated the account's contact" in third.stdout
    assert registration(tmp_path)["uri"] == uri
    assert registration(tmp_path)["body"]["contact"] == ["mailto:other@example.test"]
    fourth = run_acmebot(config)
    assert_ok(fourth)
    assert fourth.stdout == ""

    log = (tmp_path / "log").rglob("*")
    log_text = "".join(p.read_text(errors="replace") for p in log if p.is_file())
    assert "externalAccountBinding" in log_text or "registered ACME account" in log_text  # the log is there
    for text in (first.stdout, first.stderr, second.stdout, third.stdout, third.stderr, log_text,
                 config.read_text().replace(EAB_KEY, "")):
        assert EAB_KEY not in text
    assert EAB_KEY not in "".join(p.read_text(errors="replace") for p in (tmp_path / "resource").rglob("*.json"))


# -- IP address certificates (RFC 8738) --------------------------------------------------------------

def test_ip_only_certificate_by_http01(lab, tmp_path):
    config = ecdsa_config(tmp_path, lab, {"iponly": {"ip_addresses": ["127.0.0.1"]}},
                          http_challenges={"127.0.0.1": str(lab.http_challenge_dir)})
    files_before, served_before = challenge_dir_files(lab), len(served_challenges(lab))
    result = run_acmebot(config)
    assert_ok(result)
    assert len(served_challenges(lab)) > served_before       # pebble fetched the http-01 file from nginx
    assert challenge_dir_files(lab) == files_before          # which is gone again
    paths = default_paths(tmp_path, "iponly", "ecdsa")
    leaf = cert_of(paths["certificate"])
    assert sans(leaf) == ([], ["127.0.0.1"])
    verify_chain([x509.load_pem_x509_certificate(b) for b in cert_blocks(paths["certificate"].read_bytes())],
                 lab.pebble_root_pem())
    again = run_acmebot(config, "--verbose")
    assert_ok(again)
    assert "nothing to do" in again.stdout


def test_ip_address_beside_dns_names(lab, tmp_path):
    lab.add_hosts("example.test", "ipmix", "www.ipmix")
    name = "ipmix.example.test"
    config = ecdsa_config(tmp_path, lab, {name: {"alt_names": {"example.test": ["ipmix", "www.ipmix"]},
                                                "ip_addresses": ["127.0.0.1"]}},
                          http_challenges={"127.0.0.1": str(lab.http_challenge_dir)})
    assert_ok(run_acmebot(config))
    leaf = cert_of(default_paths(tmp_path, name, "ecdsa")["certificate"])
    assert sans(leaf) == ([name, f"www.{name}"], ["127.0.0.1"])
    assert cn(leaf.subject) == name
    # dropping the IP address reissues
    edit(config, lambda raw: raw["certificates"][name].pop("ip_addresses"))
    dropped = run_acmebot(config, "--verbose")
    assert_ok(dropped)
    assert "IP addresses changed" in dropped.stdout
    assert sans(cert_of(default_paths(tmp_path, name, "ecdsa")["certificate"])) == ([name, f"www.{name}"], [])


def test_ip_address_without_an_http01_directory_is_a_config_error(lab, tmp_path):
    config = ecdsa_config(tmp_path, lab, {"ipnodir": {"ip_addresses": ["127.0.0.1"]}})
    result = run_acmebot(config)
    assert_clean(result)
    assert result.returncode == 2
    assert "certificates.ipnodir.ip_addresses" in result.stderr and "http-01" in result.stderr
    assert not (tmp_path / "resource").exists() and not (tmp_path / "certs").exists()


def test_malformed_ip_address_is_a_config_error(lab, tmp_path):
    config = ecdsa_config(tmp_path, lab, {"ipbad": {"ip_addresses": ["127.0.0.300"]}},
                          http_challenges={"127.0.0.1": str(lab.http_challenge_dir)})
    result = run_acmebot(config)
    assert_clean(result)
    assert result.returncode == 2
    assert "certificates.ipbad.ip_addresses[0]" in result.stderr and "127.0.0.300" in result.stderr


# -- preferred chain -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def alt_pebble(lab):
    return pebble(lab, "caf-altroots", extra_env={"PEBBLE_ALTERNATE_ROOTS": "1"})


def chain_certs(path):
    return [x509.load_pem_x509_certificate(b) for b in cert_blocks(Path(path).read_bytes())]


def test_preferred_chain_picks_the_alternate_root(lab, alt_pebble, tmp_path):
    default_root = x509.load_pem_x509_certificate(alt_pebble.root_pem(0).encode())
    alternate_root = x509.load_pem_x509_certificate(alt_pebble.root_pem(1).encode())
    wanted = cn(alternate_root.subject)
    assert wanted != cn(default_root.subject)
    lab.add_hosts("example.test", "chain1", "chain2")
    config = ecdsa_config(tmp_path, lab, {"chain1.example.test": {"preferred_chain": wanted},
                                          "chain2.example.test": {}},
                          {"acme_directory_url": alt_pebble.directory_url})
    result = run_acmebot(config, "--verbose")
    assert_ok(result)
    assert "using the alternate chain" in result.stdout
    preferred = default_paths(tmp_path, "chain1.example.test", "ecdsa")
    chain = chain_certs(preferred["chain"])
    assert cn(chain[-1].issuer) == wanted
    verify_chain(chain_certs(preferred["certificate"]), alt_pebble.root_pem(1))
    # the other certificate keeps the CA's default chain
    default = chain_certs(default_paths(tmp_path, "chain2.example.test", "ecdsa")["chain"])
    assert cn(default[-1].issuer) == cn(default_root.subject)


def test_preferred_chain_matching_nothing_warns_and_keeps_the_default(lab, alt_pebble, tmp_path):
    lab.add_hosts("example.test", "chain3")
    name = "chain3.example.test"
    config = ecdsa_config(tmp_path, lab, {name: {}}, {"acme_directory_url": alt_pebble.directory_url,
                                                     "preferred_chain": "No Such Root X9"})
    result = run_acmebot(config)
    assert_clean(result)
    assert result.returncode == 0
    assert "preferred_chain 'No Such Root X9'" in result.stderr and "default chain" in result.stderr
    chain = chain_certs(default_paths(tmp_path, name, "ecdsa")["chain"])
    assert cn(chain[-1].issuer) == cn(x509.load_pem_x509_certificate(alt_pebble.root_pem(0).encode()).subject)
    check_issued(lab, default_paths(tmp_path, name, "ecdsa"), "ecdsa", [name], pebble=alt_pebble)


# -- account key change and deactivation ---------------------------------------------------------------

def test_account_key_rollover(lab, tmp_path):
    lab.add_hosts("example.test", "akr1", "akr2")
    config = ecdsa_config(tmp_path, lab, {"akr1.example.test": {}})
    assert_ok(run_acmebot(config))
    old_key = (tmp_path / "resource" / "client_key.pem").read_bytes()
    uri = registration(tmp_path)["uri"]

    result = run_acmebot(config, "--account-key-rollover")
    assert_ok(result)
    assert f"Changed the key of ACME account {uri}" in result.stdout
    new_key = (tmp_path / "resource" / "client_key.pem").read_bytes()
    assert new_key != old_key
    archived = list((tmp_path / "archive" / "account").glob("*/client_key.pem"))
    assert [p.read_bytes() for p in archived] == [old_key]
    assert re.fullmatch(r"\d{4}_\d{2}_\d{2}_\d{6}", archived[0].parent.name)
    assert registration(tmp_path)["uri"] == uri

    # the CA knows the account by its new key only
    cl, regr = account_client(lab.directory_url, lab.pebble_ca_bundle, new_key, uri)
    assert cl.query_registration(regr).uri == uri
    cl_old, regr_old = account_client(lab.directory_url, lab.pebble_ca_bundle, old_key, uri)
    with pytest.raises(messages.Error):
        cl_old.query_registration(regr_old)

    edit(config, lambda raw: raw["certificates"].update({"akr2.example.test": {}}))
    after = run_acmebot(config)
    assert_ok(after)
    assert "registered ACME account" not in after.stdout
    assert registration(tmp_path)["uri"] == uri
    check_issued(lab, default_paths(tmp_path, "akr2.example.test", "ecdsa"), "ecdsa", ["akr2.example.test"])


def test_deactivate_account_needs_confirmation_without_a_terminal(lab, tmp_path):
    lab.add_hosts("example.test", "deact0")
    config = ecdsa_config(tmp_path, lab, {"deact0.example.test": {}})
    assert_ok(run_acmebot(config))
    before = snapshot(tmp_path)
    result = run_acmebot(config, "--deactivate-account", input="")
    assert_clean(result)
    assert result.returncode == 2
    assert "--yes" in result.stderr
    assert snapshot(tmp_path) == before
    # still active at the CA
    cl, regr = account_client(lab.directory_url, lab.pebble_ca_bundle,
                              (tmp_path / "resource" / "client_key.pem").read_bytes(), registration(tmp_path)["uri"])
    assert cl.query_registration(regr).body.status == "valid"


def test_deactivate_account_with_yes(lab, tmp_path):
    lab.add_hosts("example.test", "deact1", "deact2")
    config = ecdsa_config(tmp_path, lab, {"deact1.example.test": {}})
    assert_ok(run_acmebot(config))
    files = account_files(tmp_path)
    uri = registration(tmp_path)["uri"]

    result = run_acmebot(config, "--deactivate-account", "--yes", input="")
    assert_ok(result)
    assert f"Deactivated ACME account {uri}" in result.stdout
    assert account_files(tmp_path) == {}
    archived = {p.name: p.read_bytes() for p in (tmp_path / "archive" / "account").glob("*/*")}
    assert archived == files

    cl, regr = account_client(lab.directory_url, lab.pebble_ca_bundle, files["client_key.pem"], uri)
    with pytest.raises(messages.Error) as refused:
        cl.query_registration(regr)
    assert refused.value.code == "unauthorized"

    # the next run registers a new account and goes on
    edit(config, lambda raw: raw["certificates"].update({"deact2.example.test": {}}))
    after = run_acmebot(config)
    assert_ok(after)
    assert "registered ACME account" in after.stdout
    assert registration(tmp_path)["uri"] != uri
    check_issued(lab, default_paths(tmp_path, "deact2.example.test", "ecdsa"), "ecdsa", ["deact2.example.test"])


# -- badNonce, 503 and 429 -----------------------------------------------------------------------------

def test_bad_nonces_are_retried(lab, tmp_path):
    # pebble rejects 25 % of valid nonces; acmebot signs again with a fresh one
    # (at most six attempts per request: at 50 % one request in 64 would still fail)
    noisy = pebble(lab, "caf-nonce", extra_env={"PEBBLE_WFE_NONCEREJECT": "25"})
    hosts = ["nonce1", "nonce2", "nonce3"]
    lab.add_hosts("example.test", *hosts)
    config = ecdsa_config(tmp_path, lab, {f"{h}.example.test": {} for h in hosts},
                          {"acme_directory_url": noisy.directory_url})
    result = run_acmebot(config, "--debug")
    assert_ok(result)
    assert result.stdout.count("badNonce from the CA") >= 1
    for host in hosts:
        name = f"{host}.example.test"
        check_issued(lab, default_paths(tmp_path, name, "ecdsa"), "ecdsa", [name], pebble=noisy)


@pytest.fixture
def proxy_factory(lab):
    proxies = []

    def start(intercept):
        proxy = CAProxy(lab, lab.pebble, intercept)
        proxies.append(proxy)
        return proxy
    yield start
    for proxy in proxies:
        proxy.stop()


def test_busy_ca_503_with_retry_after_is_waited_out(lab, tmp_path, proxy_factory):
    state = {"refused": 0}

    def busy_once(request):
        if request["method"] == "POST" and request["path"] == proxy.new_order_path and not state["refused"]:
            state["refused"] += 1
            return 503, {"Retry-After": "1", "Content-Type": "text/plain"}, b"busy\n"
        return None
    proxy = proxy_factory(busy_once)
    lab.add_hosts("example.test", "busy1")
    name = "busy1.example.test"
    config = ecdsa_config(tmp_path, lab, {name: {}}, {"acme_directory_url": proxy.directory_url})
    result = run_acmebot(config, "--verbose")
    assert_ok(result)
    assert "the CA is busy (503)" in result.stdout
    orders = proxy.new_orders()
    assert [o["status"] for o in orders] == [503, 201]
    assert orders[1]["time"] - orders[0]["time"] >= 0.9
    check_issued(lab, default_paths(tmp_path, name, "ecdsa"), "ecdsa", [name])
    assert registration(tmp_path)["uri"].startswith(f"https://127.0.0.1:{proxy.port}/")


def test_rate_limited_certificate_is_reported_once_and_others_still_issued(lab, tmp_path, proxy_factory):
    limited, fine = "ratelim1.example.test", "ratelim2.example.test"

    def limit(request):
        identifiers = (request["payload"] or {}).get("identifiers") or []
        if request["path"] == proxy.new_order_path and {"type": "dns", "value": limited} in identifiers:
            return problem(429, "rateLimited", f"too many certificates for {limited}", retry_after=3600)
        return None
    proxy = proxy_factory(limit)
    lab.add_hosts("example.test", "ratelim1", "ratelim2")
    config = ecdsa_config(tmp_path, lab, {limited: {}, fine: {}}, {"acme_directory_url": proxy.directory_url})
    started = datetime.datetime.now(datetime.timezone.utc)
    result = run_acmebot(config)
    assert_clean(result)
    assert result.returncode == 3, result.stdout + result.stderr
    until = {f"{started + datetime.timedelta(seconds=3600 + s):%Y-%m-%d %H:%M}" for s in (0, 60)}
    lines = [line for line in result.stderr.splitlines() if limited in line]
    assert len(lines) == 1, result.stderr
    assert "rate limited by the CA until" in lines[0]
    assert any(f"until {u} UTC" in lines[0] for u in until), lines[0]
    attempts = [o for o in proxy.new_orders() if {"type": "dns", "value": limited} in o["payload"]["identifiers"]]
    assert [o["status"] for o in attempts] == [429]
    assert not default_paths(tmp_path, limited, "ecdsa")["certificate"].exists()
    check_issued(lab, default_paths(tmp_path, fine, "ecdsa"), "ecdsa", [fine])
    assert f"Issued certificate {fine}" in result.stdout


# -- expiry notices ------------------------------------------------------------------------------------

LIFETIME = 9     # seconds: renewal (and the notice) from the last third, 3 s before expiry


@pytest.fixture(scope="module")
def short_pebble(lab):
    # no authorization reuse: a renewal must be validated again (and can fail)
    return pebble(lab, "caf-short", {"certificateValidityPeriod": LIFETIME}, {"PEBBLE_AUTHZREUSE": "0"})


def set_due(clock, path, margin=0.3):
    """Sets ``clock`` to ``margin`` seconds into the last third of the certificate's
    lifetime (renewal and the expiry notice are due); returns the certificate."""
    cert = cert_of(path)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    clock.set(cert.not_valid_after_utc - lifetime / 3 + datetime.timedelta(seconds=margin))
    return cert


def test_expiry_notice_when_renewal_fails(lab, short_pebble, tmp_path):
    lab.add_hosts("example.test", "notice1")
    name = "notice1.example.test"
    record = tmp_path / "notify.jsonl"
    config = ecdsa_config(
        tmp_path, lab, {name: {}}, {"acme_directory_url": short_pebble.directory_url},
        http_challenges={name: str(lab.http_challenge_dir)},
        hooks={"notify": f"{sys.executable} {HOOK} {record} certificate_name={{certificate_name}} "
                         f"key_type={{key_type}} not_after={{not_after}} days_left={{days_left}} "
                         f"problem={{problem}}"})
    clock = FakeClock(real_sleep=True)
    assert_ok(run_main(config, clock=clock))
    path = default_paths(tmp_path, name, "ecdsa")["certificate"]
    assert not record.exists()
    # http-01 breaks: the directory nginx serves is no longer where the files go
    unserved = tmp_path / "unserved"
    unserved.mkdir()
    edit(config, lambda raw: raw["http_challenges"].update({name: str(unserved)}))
    cert = set_due(clock, path)
    result = run_main(config, clock=clock)
    assert_clean(result)
    assert result.returncode == 4, result.stdout + result.stderr
    notices = [line for line in result.stderr.splitlines() if "AND COULD NOT BE RENEWED" in line]
    assert len(notices) == 1, result.stderr
    assert re.match(rf"ERROR: CERTIFICATE {re.escape(name)} \(ecdsa\) (EXPIRES IN [0-9.]+ DAYS|EXPIRED) ", notices[0])
    assert f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC" in notices[0]
    assert cert_of(path).serial_number == cert.serial_number
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(calls) == 1
    call = calls[0]
    assert call["certificate_name"] == name and call["key_type"] == "ecdsa"
    assert datetime.datetime.fromisoformat(call["not_after"]) == cert.not_valid_after_utc
    assert 0 <= float(call["days_left"]) < 0.001
    assert "404" in call["problem"] or "unauthorized" in call["problem"], call["problem"]


def test_no_expiry_notice_when_renewal_succeeds(lab, short_pebble, tmp_path):
    lab.add_hosts("example.test", "notice2")
    name = "notice2.example.test"
    record = tmp_path / "notify.jsonl"
    config = ecdsa_config(tmp_path, lab, {name: {}}, {"acme_directory_url": short_pebble.directory_url},
                          hooks={"notify": f"{sys.executable} {HOOK} {record} x={{certificate_name}}"})
    clock = FakeClock(real_sleep=True)
    assert_ok(run_main(config, clock=clock))
    path = default_paths(tmp_path, name, "ecdsa")["certificate"]
    first = set_due(clock, path)
    renewed = run_main(config, clock=clock)
    assert_ok(renewed)
    assert cert_of(path).serial_number != first.serial_number
    assert not record.exists()


def test_expiry_notice_when_the_ca_cannot_be_reached(lab, short_pebble, tmp_path):
    lab.add_hosts("example.test", "notice3")
    name = "notice3.example.test"
    config = ecdsa_config(tmp_path, lab, {name: {}}, {"acme_directory_url": short_pebble.directory_url})
    clock = FakeClock(real_sleep=True)
    assert_ok(run_main(config, clock=clock))
    path = default_paths(tmp_path, name, "ecdsa")["certificate"]
    edit(config, lambda raw: raw["settings"].update(
        acme_directory_url=f"https://127.0.0.1:{free_port()}/dir"))
    set_due(clock, path)
    result = run_main(config, clock=clock)
    assert_clean(result)
    assert result.returncode == 3, result.stdout + result.stderr
    assert f"CERTIFICATE {name} (ecdsa)" in result.stderr and "AND COULD NOT BE RENEWED" in result.stderr
    assert "cannot reach the CA" in result.stderr


def test_deactivate_account_without_an_account_registers_nothing(lab, tmp_path):
    """--deactivate-account --yes with no account on disk must not register an
    account at the CA just to deactivate it."""
    config = ecdsa_config(tmp_path, lab, {"nodeact.example.test": {}})
    result = run_acmebot(config, "--deactivate-account", "--yes", input="")
    assert_clean(result)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "registered ACME account" not in result.stdout
    assert account_files(tmp_path) == {}
    assert not (tmp_path / "archive").exists()


def test_account_key_rollovers_in_the_same_second_keep_every_old_key(lab, tmp_path):
    """Each old account key goes to archive/account/<stamp>/: two key changes
    within one second must not overwrite the first archived key."""
    lab.add_hosts("example.test", "akrfast")
    config = ecdsa_config(tmp_path, lab, {"akrfast.example.test": {}})
    assert_ok(run_acmebot(config))
    old_keys = []
    for _ in range(3):
        old_keys.append((tmp_path / "resource" / "client_key.pem").read_bytes())
        assert_ok(run_acmebot(config, "--account-key-rollover"))
    archived = [p.read_bytes() for p in (tmp_path / "archive" / "account").rglob("client_key.pem")]
    assert sorted(archived) == sorted(old_keys)
