"""TLSA records (RFC 2136 updates to BIND, reload_zone_command for local zones) and
HPKP header files, checked against hashes computed here from the files acmebot wrote."""

import base64
import hashlib
import json
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import make_config, run_acmebot
from test_issue import KEY_TYPES, assert_ok, default_paths

USAGES = {"pkix-ta": 0, "pkix-ee": 1, "dane-ta": 2, "dane-ee": 3}
SELECTORS = {"cert": 0, "spki": 1}


# -- helpers -------------------------------------------------------------------------------------

def spki_of_key(path):
    key = serialization.load_pem_private_key(Path(path).read_bytes(), None)
    return key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def certs_of(path):
    return x509.load_pem_x509_certificates(Path(path).read_bytes())


def der(cert):
    return cert.public_bytes(serialization.Encoding.DER)


def cert_spki(cert):
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def tlsa(usage, selector, material):
    return f"{USAGES[usage]} {SELECTORS[selector]} 1 {hashlib.sha256(material).hexdigest()}"


def pin(material):
    return base64.b64encode(hashlib.sha256(material).digest()).decode()


def served(lab, owner):
    """{"u s m hex"} BIND serves at owner."""
    return {f"{r.usage} {r.selector} {r.mtype} {r.cert.hex()}" for r in lab.query(owner, "TLSA")}


def ttl_of(lab, owner):
    import dns.message
    import dns.query
    response = dns.query.tcp(dns.message.make_query(owner, "TLSA"), "127.0.0.1", port=lab.dns_port, timeout=5)
    return response.answer[0].ttl


def soa_serial(lab, zone):
    return lab.query(zone, "SOA")[0].serial


def key_spkis(tmp_path, key_name, previous_dir=None):
    """{key type: [primary, backup(, previous)] SPKI DER} from the key files."""
    out = {}
    for key_type in KEY_TYPES:
        paths = default_paths(tmp_path, key_name, key_type)
        out[key_type] = [spki_of_key(paths["key"]), spki_of_key(paths["backup"])]
        if previous_dir is not None:
            previous = Path(previous_dir) / f"{key_name}_previous.{key_type}.key"
            if previous.exists():
                out[key_type].append(spki_of_key(previous))
    return out


def expected_records(tmp_path, name, usage, selector, previous_dir=None, root=None):
    """What acmebot should publish for one tlsa_records entry, from the files on disk."""
    values = set()
    for key_type in KEY_TYPES:
        chain = certs_of(default_paths(tmp_path, name, key_type)["certificate"])
        if usage.endswith("-ee"):
            if selector == "cert":
                values.add(tlsa(usage, "cert", der(chain[0])))
            else:
                for spki in key_spkis(tmp_path, name, previous_dir)[key_type]:
                    values.add(tlsa(usage, "spki", spki))
        else:
            anchors = chain[1:] + ([x509.load_pem_x509_certificate(root.encode())] if root else [])
            for cert in anchors:
                values.add(tlsa(usage, selector, der(cert) if selector == "cert" else cert_spki(cert)))
    return values


def hpkp_text(pins, days, subdomains=True, report_uri=None, template="nginx"):
    parts = [f'pin-sha256=\\"{p}\\"' for p in dict.fromkeys(pins)]
    parts.append(f"max-age={days * 86400}")
    if subdomains:
        parts.append("includeSubDomains")
    if report_uri:
        parts.append(f'report-uri=\\"{report_uri}\\"')
    header = "; ".join(parts)
    if template == "nginx":
        return f'add_header Public-Key-Pins "{header}" always;\n'
    if template == "apache":
        return f'Header always set Public-Key-Pins "{header}"\n'
    return template.format(header=header)


def all_pins(tmp_path, key_name, previous_dir=None):
    spkis = key_spkis(tmp_path, key_name, previous_dir)
    return [pin(s) for key_type in KEY_TYPES for s in spkis[key_type]]


# -- remote zone (RFC 2136) ------------------------------------------------------------------------

def test_tlsa_remote_records_match_files_and_drift_is_repaired(lab, tmp_path):
    lab.add_hosts("example.test", "tlsar")
    name = "tlsar.example.test"
    root = lab.pebble_root_pem()
    for key_type in KEY_TYPES:
        (tmp_path / f"root_cert.{key_type}.pem").write_text(root)
    config = make_config(tmp_path, lab, {"certificates": {name: {"tlsa_records": {"example.test": [
        "tlsar",
        {"host": "tlsar", "port": 443, "usage": "pkix-ta", "selector": "cert"},
        {"host": "tlsar", "port": 25, "usage": "dane-ee", "selector": "spki"},
        {"host": "tlsar", "port": 587, "usage": "dane-ee", "selector": "cert", "ttl": 600},
        {"host": "tlsar", "port": 993, "usage": "dane-ta", "selector": "spki"},
    ]}}}})
    result = run_acmebot(config)
    assert_ok(result)
    assert "TLSA" in result.stdout

    o443, o25, o587, o993 = (f"_{p}._tcp.{name}" for p in (443, 25, 587, 993))
    want = {
        o443: expected_records(tmp_path, name, "pkix-ee", "spki")
        | expected_records(tmp_path, name, "pkix-ta", "cert", root=root),
        o25: expected_records(tmp_path, name, "dane-ee", "spki"),
        o587: expected_records(tmp_path, name, "dane-ee", "cert"),
        o993: expected_records(tmp_path, name, "dane-ta", "spki", root=root),
    }
    assert len(want[o25]) == 4                         # primary + backup, rsa + ecdsa
    assert len(want[o587]) == 2
    assert len(want[o443]) == 4 + len(certs_of(default_paths(tmp_path, name, "rsa")["chain"])) + 1
    for owner, values in want.items():
        assert served(lab, owner) == values, owner
    assert ttl_of(lab, o587) == 600 and ttl_of(lab, o25) == 300

    # nothing changed: no update at all
    serial = soa_serial(lab, "example.test")
    quiet = run_acmebot(config)
    assert_ok(quiet)
    assert "TLSA" not in quiet.stdout
    assert soa_serial(lab, "example.test") == serial

    # drift: one set deleted, one record altered, one foreign record added
    message = lab.update("example.test")
    message.delete("_25._tcp.tlsar")
    message.delete("_587._tcp.tlsar")
    message.add("_587._tcp.tlsar", 600, "TLSA", "3 0 1 " + "ab" * 32)
    message.add("_443._tcp.tlsar", 300, "TLSA", "1 1 1 " + "cd" * 32)
    lab.send_update(message)
    assert served(lab, o25) == set()
    repaired = run_acmebot(config, "--tlsa")
    assert_ok(repaired)
    assert "TLSA" in repaired.stdout and o25 in repaired.stdout and o443 in repaired.stdout
    assert o993 not in repaired.stdout
    for owner, values in want.items():
        assert served(lab, owner) == values, owner
    serial = soa_serial(lab, "example.test")
    again = run_acmebot(config, "--tlsa")
    assert_ok(again)
    assert again.stdout == ""
    assert soa_serial(lab, "example.test") == serial


def test_tlsa_rollover_keeps_previous_key_and_revocation_removes_records(lab, tmp_path):
    lab.add_hosts("example.test", "tlsaroll")
    name = "tlsaroll.example.test"
    previous = tmp_path / "previous"
    config = make_config(tmp_path, lab, {
        "settings": {"hpkp_days": 1},
        "directories": {"previous_key": str(previous)},
        "certificates": {name: {"tlsa_records": {"example.test": [
            {"host": "tlsaroll", "port": 25, "usage": "dane-ee", "selector": "spki"},
            {"host": "tlsaroll", "port": 443, "usage": "pkix-ee", "selector": "cert"}]}}}})
    assert_ok(run_acmebot(config))
    o25, o443 = f"_25._tcp.{name}", f"_443._tcp.{name}"
    old = key_spkis(tmp_path, name)
    assert served(lab, o25) == {tlsa("dane-ee", "spki", s) for t in KEY_TYPES for s in old[t]}

    rolled = run_acmebot(config, "--rollover", "--force")
    assert_ok(rolled)
    assert "Rolled over private key" in rolled.stdout
    new = key_spkis(tmp_path, name, previous)
    for key_type in KEY_TYPES:
        assert new[key_type][0] == old[key_type][1]          # the backup became the primary
        assert new[key_type][2] == old[key_type][0]          # the old primary is the previous key
        assert new[key_type][1] not in old[key_type]
    assert served(lab, o25) == {tlsa("dane-ee", "spki", s) for t in KEY_TYPES for s in new[t]}
    assert len(served(lab, o25)) == 6
    assert served(lab, o443) == expected_records(tmp_path, name, "pkix-ee", "cert")

    # the previous key files removed: --tlsa drops their records
    for key_type in KEY_TYPES:
        (previous / f"{name}_previous.{key_type}.key").unlink()
    dropped = run_acmebot(config, "--tlsa")
    assert_ok(dropped)
    current = key_spkis(tmp_path, name, previous)
    assert served(lab, o25) == {tlsa("dane-ee", "spki", s) for t in KEY_TYPES for s in current[t]}
    assert len(served(lab, o25)) == 4

    revoked = run_acmebot(config, "--revoke", name)
    assert_ok(revoked)
    assert served(lab, o25) == set() and served(lab, o443) == set()


# -- local zone (reload_zone_command) --------------------------------------------------------------

def _reload_wrapper(lab, tmp_path):
    log = tmp_path / "reload-calls.log"
    wrapper = tmp_path / "reload-wrapper.sh"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {lab.reload_zone_command(tmp_path / "challenge")} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper), log


def _calls(log):
    return log.read_text().splitlines() if log.exists() else []


def test_tlsa_local_zone_calls_reload_zone_command_when_records_change(lab, tmp_path):
    lab.add_hosts("example.test", "tlsaloc")
    name = "tlsaloc.example.test"          # issued by dns-01 in example.test: no reload for challenges
    wrapper, log = _reload_wrapper(lab, tmp_path)
    config = make_config(tmp_path, lab, {
        "settings": {"reload_zone_command": wrapper, "key_size": 0},
        "certificates": {name: {"tlsa_records": {"local.test": ["tlsaloc"]}}}})
    result = run_acmebot(config)
    assert_ok(result)
    assert _calls(log) == ["local.test"]
    assert "local.test" in result.stdout

    quiet = run_acmebot(config)
    assert_ok(quiet)
    assert quiet.stdout == ""
    assert _calls(log) == ["local.test"]

    renewed = run_acmebot(config, "--renew")
    assert_ok(renewed)
    assert _calls(log) == ["local.test", "local.test"]

    # follower mode: the certificate changes (authorizations are reused), no reload
    raw = json.loads(config.read_text())
    raw["settings"]["follower_mode"] = True
    config.write_text(json.dumps(raw))
    follower = run_acmebot(config, "--renew")
    assert_ok(follower)
    assert "Issued certificate" in follower.stdout
    assert _calls(log) == ["local.test", "local.test"]


# -- HPKP files ------------------------------------------------------------------------------------

def test_hpkp_default_files_have_every_pin(lab, tmp_path):
    lab.add_hosts("example.test", "hpkpdef")
    name = "hpkpdef.example.test"
    config = make_config(tmp_path, lab, {"certificates": {name: {}}})
    assert_ok(run_acmebot(config))
    pins = all_pins(tmp_path, name)
    assert len(set(pins)) == 4
    assert sorted(p.name for p in (tmp_path / "hpkp").iterdir()) == [f"{name}.apache", f"{name}.nginx"]
    assert (tmp_path / "hpkp" / f"{name}.nginx").read_text() == hpkp_text(pins, 60)
    assert (tmp_path / "hpkp" / f"{name}.apache").read_text() == hpkp_text(pins, 60, template="apache")


def test_hpkp_options_and_custom_server_template(lab, tmp_path):
    lab.add_hosts("example.test", "hpkpopt")
    name = "hpkpopt.example.test"
    config = make_config(tmp_path, lab, {
        "hpkp_headers": {"apache": None, "caddy": "header Public-Key-Pins \"{header}\" # {key_name} {server}\n"},
        "private_keys": {"pinned": {"hpkp_days": 7, "pin_subdomains": False,
                                    "hpkp_report_uri": "https://report.example.test/hpkp",
                                    "key_types": ["ecdsa"], "certificates": {name: {}}}}})
    assert_ok(run_acmebot(config))
    ecdsa = default_paths(tmp_path, "pinned", "ecdsa")
    pins = [pin(spki_of_key(ecdsa["key"])), pin(spki_of_key(ecdsa["backup"]))]
    assert sorted(p.name for p in (tmp_path / "hpkp").iterdir()) == ["pinned.caddy", "pinned.nginx"]
    args = (pins, 7, False, "https://report.example.test/hpkp")
    assert (tmp_path / "hpkp" / "pinned.nginx").read_text() == hpkp_text(*args)
    caddy = hpkp_text(*args, template="header Public-Key-Pins \"{header}\" # pinned caddy\n")
    assert (tmp_path / "hpkp" / "pinned.caddy").read_text() == caddy
    assert "max-age=604800" in caddy and "includeSubDomains" not in caddy


def test_hpkp_days_zero_writes_no_files(lab, tmp_path):
    lab.add_hosts("example.test", "hpkpzero")
    config = make_config(tmp_path, lab, {"settings": {"hpkp_days": 0, "key_size": 0},
                                         "certificates": {"hpkpzero.example.test": {}}})
    assert_ok(run_acmebot(config))
    assert not (tmp_path / "hpkp").exists() or list((tmp_path / "hpkp").iterdir()) == []


def test_hpkp_pins_follow_rollover(lab, tmp_path):
    lab.add_hosts("example.test", "hpkproll")
    name = "hpkproll.example.test"
    config = make_config(tmp_path, lab, {"settings": {"hpkp_days": 1}, "certificates": {name: {}}})
    assert_ok(run_acmebot(config))
    before = key_spkis(tmp_path, name)
    nginx, apache = (tmp_path / "hpkp" / f"{name}.{server}" for server in ("nginx", "apache"))
    assert nginx.read_text() == hpkp_text(all_pins(tmp_path, name), 1)
    assert_ok(run_acmebot(config, "--rollover", "--force"))
    after = key_spkis(tmp_path, name)
    for key_type in KEY_TYPES:
        assert after[key_type][0] == before[key_type][1]
        assert after[key_type][1] not in before[key_type]
    pins = all_pins(tmp_path, name)
    assert nginx.read_text() == hpkp_text(pins, 1)
    assert apache.read_text() == hpkp_text(pins, 1, template="apache")
    # the old primaries are no longer pinned (no previous_key directory)
    assert not {pin(before[t][0]) for t in KEY_TYPES} & set(nginx.read_text().split('\\"')[1::2])


def _rolled_over_with_previous(lab, tmp_path, host):
    """A certificate issued, then rolled over with a previous_key directory."""
    lab.add_hosts("example.test", host)
    name = f"{host}.example.test"
    previous = tmp_path / "previous"
    config = make_config(tmp_path, lab, {"settings": {"hpkp_days": 1},
                                         "directories": {"previous_key": str(previous)},
                                         "certificates": {name: {}}})
    assert_ok(run_acmebot(config))
    before = key_spkis(tmp_path, name)
    assert_ok(run_acmebot(config, "--rollover", "--force"))
    assert sorted(p.name for p in previous.iterdir()) == [f"{name}_previous.ecdsa.key", f"{name}_previous.rsa.key"]
    return config, name, previous, before


def test_hpkp_files_pin_the_previous_keys_after_rollover(lab, tmp_path):
    """Spec: while previous private key files are present, their pins are in the HPKP
    headers — including right after the rollover that writes them."""
    config, name, previous, before = _rolled_over_with_previous(lab, tmp_path, "hpkpprev2")
    pins = all_pins(tmp_path, name, previous)       # primary, backup, previous per key type
    assert {pin(before[t][0]) for t in KEY_TYPES} <= set(pins)
    assert (tmp_path / "hpkp" / f"{name}.nginx").read_text() == hpkp_text(pins, 1)


def test_hpkp_files_drop_the_previous_keys_once_their_files_are_removed(lab, tmp_path):
    """Removing the previous key files (once the new keys are deployed everywhere)
    drops their pins from the HPKP files on the next run."""
    config, name, previous, _ = _rolled_over_with_previous(lab, tmp_path, "hpkpprev3")
    assert_ok(run_acmebot(config))
    assert (tmp_path / "hpkp" / f"{name}.nginx").read_text() == hpkp_text(all_pins(tmp_path, name, previous), 1)
    for key_type in KEY_TYPES:
        (previous / f"{name}_previous.{key_type}.key").unlink()
    assert_ok(run_acmebot(config))
    assert (tmp_path / "hpkp" / f"{name}.nginx").read_text() == hpkp_text(all_pins(tmp_path, name), 1)


def test_hpkp_files_follow_config_changes(lab, tmp_path):
    """hpkp_report_uri / pin_subdomains / hpkp_days changed in the config: the next
    run rewrites the HPKP files."""
    lab.add_hosts("example.test", "hpkpconf")
    name = "hpkpconf.example.test"
    config = make_config(tmp_path, lab, {"settings": {"key_size": 0}, "certificates": {name: {}}})
    assert_ok(run_acmebot(config))
    config = make_config(tmp_path, lab, {"settings": {"key_size": 0, "hpkp_days": 5, "pin_subdomains": False,
                                                      "hpkp_report_uri": "https://r.example.test/"},
                                         "certificates": {name: {}}})
    assert_ok(run_acmebot(config))
    paths = default_paths(tmp_path, name, "ecdsa")
    pins = [pin(spki_of_key(paths["key"])), pin(spki_of_key(paths["backup"]))]
    assert (tmp_path / "hpkp" / f"{name}.nginx").read_text() == \
        hpkp_text(pins, 5, False, "https://r.example.test/")
