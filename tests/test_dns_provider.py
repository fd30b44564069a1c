"""dns-01 and TLSA records through a DNS provider's API: dns-lexicon's `powerdns`
provider against a real PowerDNS Authoritative server (HTTP API, sqlite3 backend)
started on loopback, serving a zone that pebble validates through.

    PowerDNS (authoritative for pdns.test, API on its webserver port)
        ^ forward zone pdns.test            ^ lexicon (acmebot) writes records
    a recursive BIND (also forwarding the lab's zones to the lab BIND)
        ^ pebble's and acmebot's resolver

PowerDNS is required: a missing pdns_server fails these tests (tests/install-deps
installs it), it never skips them.
"""

import json
import os
import secrets
import shutil
import subprocess

import dns.message
import dns.query
import pytest
import requests

from conftest import make_config, run_acmebot
from lab import ZONES, LabError, Server, free_port, named_options
from test_issue import assert_clean, assert_ok, check_issued, default_paths, snapshot
from test_tlsa_hpkp import expected_records

ZONE = "pdns.test"


class PowerDns:
    """pdns_server in the foreground with its own config dir and sqlite database."""

    def __init__(self, directory):
        binary = shutil.which("pdns_server") or "/usr/sbin/pdns_server"
        schema = "/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql"
        if not os.path.exists(binary) or not os.path.exists(schema) or not shutil.which("sqlite3"):
            raise LabError("PowerDNS is missing: tests/install-deps installs pdns-server, "
                           "pdns-backend-sqlite3 and sqlite3")
        self.directory = directory
        directory.mkdir(mode=0o755)
        database = directory / "pdns.sqlite3"
        with open(schema, "rb") as f:
            subprocess.run(["sqlite3", str(database)], stdin=f, check=True, capture_output=True)
        self.dns_port, self.api_port = free_port(), free_port()
        self.api_key = secrets.token_hex(16)
        (directory / "pdns.conf").write_text(
            "launch=gsqlite3\n"
            f"gsqlite3-database={database}\n"
            "local-address=127.0.0.1\n"
            f"local-port={self.dns_port}\n"
            "api=yes\n"
            f"api-key={self.api_key}\n"
            "webserver=yes\n"
            "webserver-address=127.0.0.1\n"
            f"webserver-port={self.api_port}\n"
            "webserver-allow-from=127.0.0.1/32\n"
            "cache-ttl=0\nnegquery-cache-ttl=0\nquery-cache-ttl=0\n")
        self.server = Server("pdns_server", [binary, f"--config-dir={directory}", "--daemon=no", "--guardian=no",
                                             "--disable-syslog", f"--socket-dir={directory}"],
                             directory / "pdns.log", cwd=directory)
        self.server.wait_ready(self._ready)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.api_port}"

    def api(self, method, path, body=None):
        response = requests.request(method, f"{self.url}/api/v1/servers/localhost{path}", json=body,
                                    headers={"X-API-Key": self.api_key}, timeout=10)
        response.raise_for_status()
        return response.json() if response.content else None

    def _ready(self):
        try:
            return self.api("GET", "")["id"] == "localhost"
        except requests.RequestException:
            return False

    def create_zone(self, zone, hosts):
        self.api("POST", "/zones", {
            "name": f"{zone}.", "kind": "Native", "nameservers": [f"ns1.{zone}."],
            "rrsets": [{"name": f"{host}{zone}.", "type": "A", "ttl": 300, "changetype": "REPLACE",
                        "records": [{"content": "127.0.0.1", "disabled": False}]}
                       for host in ("ns1.", "", "www.")]})

    def rrsets(self, zone, rdtype):
        """{owner: {content}} of the zone's records of one type, as the API shows them."""
        return {r["name"].rstrip("."): {" ".join(x["content"].lower().split()) for x in r["records"]}
                for r in self.api("GET", f"/zones/{zone}.")["rrsets"] if r["type"] == rdtype}

    def ttl(self, zone, owner, rdtype):
        [ttl] = [r["ttl"] for r in self.api("GET", f"/zones/{zone}.")["rrsets"]
                 if r["name"] == f"{owner}." and r["type"] == rdtype]
        return ttl

    def stop(self):
        self.server.stop()


@pytest.fixture(scope="module")
def pdns(lab):
    server = PowerDns(lab.root / "pdns")
    try:
        server.create_zone(ZONE, ("ns1", "@", "www"))
        yield server
    finally:
        server.stop()


def start_resolver(lab, pdns, name):
    """A recursive BIND forwarding pdns.test to PowerDNS and the lab's zones to
    the lab BIND."""
    directory = lab.root / name
    directory.mkdir(mode=0o755)
    port = free_port()
    forwards = [(ZONE, pdns.dns_port)] + [(zone, lab.dns_port) for zone in ZONES]
    conf = directory / "named.conf"
    conf.write_text(named_options(directory, port, recursive=True) + "".join(
        f'zone "{zone}" {{ type forward; forward only; forwarders {{ 127.0.0.1 port {p}; }}; }};\n'
        for zone, p in forwards))
    server = Server(name, ["named", "-g", "-c", conf], directory / "named.log", cwd=directory)

    def ready():
        try:
            request = dns.message.make_query(ZONE, "SOA")
            return bool(dns.query.udp(request, "127.0.0.1", port=port, timeout=0.5).answer)
        except Exception:  # noqa: BLE001 - not up yet
            return False
    try:
        server.wait_ready(ready)
    except BaseException:
        server.stop()
        raise
    return server, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def pdns_resolver(lab, pdns):
    """acmebot's resolver.  Not pebble's: acmebot's CNAME lookup of a name
    that does not exist yet leaves an NXDOMAIN in the resolver's cache (for
    the rest of that second, even with max-ncache-ttl 0), which pebble would
    then be served; a CA's resolver is not the admin's either."""
    server, address = start_resolver(lab, pdns, "pdns-resolver")
    yield address
    server.stop()


@pytest.fixture(scope="module")
def ca_resolver(lab, pdns):
    """pebble's resolver."""
    server, address = start_resolver(lab, pdns, "pdns-ca-resolver")
    yield address
    server.stop()


@pytest.fixture(scope="module")
def pdns_pebble(lab, ca_resolver):
    return lab.pebbles.get("pdns") or lab.start_pebble("pdns", dns_server=ca_resolver)


def provider_config(tmp_path, lab, pdns, pebble, resolver, entry, certificates, **extra):
    """The lab config with pdns.test behind the powerdns provider; acmebot's
    resolver follows the forward zones, and the propagation check asks
    PowerDNS (the zone's only name server) at its port."""
    return make_config(tmp_path, lab, {
        "settings": {"acme_directory_url": pebble.directory_url, "dns_resolvers": [resolver],
                     "dns_port": pdns.dns_port, "reload_zone_command": None},
        "dns_providers": {ZONE: {"provider": "powerdns", **entry}},
        "certificates": certificates, **extra})


def credentials_file(tmp_path, pdns, mode=0o600):
    path = tmp_path / "pdns-credentials.json"
    path.write_text(json.dumps({"auth_token": pdns.api_key}))
    path.chmod(mode)
    return path


def test_wildcard_and_apex_through_powerdns_api_with_tlsa(lab, pdns, pdns_resolver, pdns_pebble, tmp_path):
    config = provider_config(
        tmp_path, lab, pdns, pdns_pebble, pdns_resolver,
        {"credentials": {"pdns_server": pdns.url}, "credentials_file": str(credentials_file(tmp_path, pdns))},
        {ZONE: {"alt_names": {ZONE: ["@", "*"]}, "tlsa_records": {ZONE: ["www"]}}})
    result = run_acmebot(config, "--verbose")
    assert_ok(result)
    assert "set 2 TXT records in zone pdns.test" in result.stdout
    for key_type in ("rsa", "ecdsa"):
        check_issued(lab, default_paths(tmp_path, ZONE, key_type), key_type, [ZONE, f"*.{ZONE}"],
                     pebble=pdns_pebble)
    assert pdns.rrsets(ZONE, "TXT") == {}                      # the challenges are gone from PowerDNS
    owner = f"_443._tcp.www.{ZONE}"
    want = expected_records(tmp_path, ZONE, "pkix-ee", "spki")
    assert len(want) == 4                                      # primary + backup, rsa + ecdsa
    assert pdns.rrsets(ZONE, "TLSA") == {owner: want}
    assert pdns.ttl(ZONE, owner, "TLSA") == 300                # tlsa_records' default, not lexicon's 3600
    served = dns.query.udp(dns.message.make_query(owner, "TLSA"), "127.0.0.1", port=pdns.dns_port, timeout=5)
    assert {f"{r.usage} {r.selector} {r.mtype} {r.cert.hex()}" for r in served.answer[0]} == want
    # the API key never shows: not in the output, not in the log
    logs = "".join(p.read_text() for p in (tmp_path / "log").rglob("*") if p.is_file())
    assert logs and pdns.api_key not in result.stdout + result.stderr + logs

    # nothing due: no API call changes anything, nothing printed
    before = snapshot(tmp_path)
    quiet = run_acmebot(config)
    assert_ok(quiet)
    assert quiet.stdout == "" and snapshot(tmp_path) == before

    # drift in the provider's zone is repaired through the API
    pdns.api("PATCH", f"/zones/{ZONE}.", {"rrsets": [{"name": f"{owner}.", "type": "TLSA", "changetype": "DELETE"}]})
    repaired = run_acmebot(config, "--tlsa")
    assert_ok(repaired)
    assert owner in repaired.stdout
    assert pdns.rrsets(ZONE, "TLSA") == {owner: want}


def test_cname_delegation_into_a_provider_zone(lab, pdns, pdns_resolver, pdns_pebble, tmp_path):
    lab.add_hosts("example.test", "pdeleg")
    update = lab.update("example.test")
    update.replace("_acme-challenge.pdeleg", 300, "CNAME", f"pdeleg.acme.{ZONE}.")
    lab.send_update(update)
    name = "pdeleg.example.test"
    config = provider_config(tmp_path, lab, pdns, pdns_pebble, pdns_resolver,
                             {"credentials": {"pdns_server": pdns.url},
                              "credentials_env": {"auth_token": "PDNS_TEST_API_KEY"}},
                             {name: {"key_types": ["ecdsa"]}})
    raw = json.loads(config.read_text())
    raw["zone_update_keys"].pop("example.test")       # the only way in: the CNAME into pdns.test
    config.write_text(json.dumps(raw))
    result = run_acmebot(config, "--verbose", env={"PDNS_TEST_API_KEY": pdns.api_key})
    assert_ok(result)
    assert f"delegated to pdeleg.acme.{ZONE} (zone {ZONE})" in result.stdout
    check_issued(lab, default_paths(tmp_path, name, "ecdsa"), "ecdsa", [name], pebble=pdns_pebble)
    assert pdns.rrsets(ZONE, "TXT") == {}


def test_credentials_file_open_to_others_is_refused(lab, pdns, pdns_resolver, pdns_pebble, tmp_path):
    config = provider_config(
        tmp_path, lab, pdns, pdns_pebble, pdns_resolver,
        {"credentials": {"pdns_server": pdns.url}, "credentials_file": str(credentials_file(tmp_path, pdns, 0o644))},
        {ZONE: {"alt_names": {ZONE: ["@", "*"]}}})
    before = snapshot(tmp_path)
    result = run_acmebot(config)
    assert_clean(result)
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.splitlines()
    assert "dns_providers.pdns.test.credentials_file" in line and "mode 0644" in line and "chmod 600" in line
    assert pdns.api_key not in result.stdout + result.stderr
    assert snapshot(tmp_path) == before


def test_missing_dns_lexicon_is_a_config_error(lab, pdns, pdns_resolver, pdns_pebble, tmp_path):
    """dns-lexicon is installed on this machine (the other tests need it), and
    uninstalling it would break test runs beside this one: a `lexicon` package
    earlier on PYTHONPATH that raises ModuleNotFoundError, as Python does for
    a package that is not there, stands for its absence."""
    shadow = tmp_path / "shadow" / "lexicon"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'lexicon'\", name='lexicon')\n")
    config = provider_config(
        tmp_path, lab, pdns, pdns_pebble, pdns_resolver,
        {"credentials": {"pdns_server": pdns.url, "auth_token": pdns.api_key}},
        {ZONE: {"alt_names": {ZONE: ["@", "*"]}}})
    before = snapshot(tmp_path)
    result = run_acmebot(config, env={"PYTHONPATH": str(shadow.parent)})
    assert_clean(result)
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.splitlines()
    assert "dns_providers.pdns.test.provider" in line and "dns-lexicon" in line
    assert "pipx inject acmebot dns-lexicon" in line and "pip install dns-lexicon" in line
    assert snapshot(tmp_path) == before


def test_a_refused_api_key_fails_the_certificate_in_one_line(lab, pdns, pdns_resolver, pdns_pebble, tmp_path):
    wrong = "wrong-" + pdns.api_key
    config = provider_config(
        tmp_path, lab, pdns, pdns_pebble, pdns_resolver,
        {"credentials": {"pdns_server": pdns.url, "auth_token": wrong}},
        {ZONE: {"alt_names": {ZONE: ["@", "*"]}, "key_types": ["ecdsa"]}})
    result = run_acmebot(config)
    assert_clean(result)
    assert result.returncode == 4, result.stdout + result.stderr
    [line] = result.stderr.splitlines()
    assert "powerdns API of zone pdns.test: authentication failed: HTTPError: 401" in line
    assert wrong not in result.stdout + result.stderr
    assert not default_paths(tmp_path, ZONE, "ecdsa")["certificate"].exists()
    assert pdns.rrsets(ZONE, "TXT") == {}
