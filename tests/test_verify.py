"""Installation verification (--verify): acmebot connects to every name, address,
configured port and key type and compares what is served (chain, OCSP staple,
Public-Key-Pins header, TLSA records) with what it installed.  The servers are those of
tests/lab/tls_servers.py (nginx, dovecot, vsftpd, slapd, prosody, and a Python TLS server
for per-key-type OCSP staples), fed acmebot's files, or other files to simulate what goes
wrong; problems are warnings on stderr and exit 0."""

import base64
import datetime
import hashlib
import json
import shutil
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from conftest import make_config, run_acmebot
from lab import free_port
from test_issue import KEY_TYPES, assert_clean, assert_ok, default_paths
from test_tlsa_hpkp import served, spki_of_key, tlsa
from lab.tls_servers import tls_servers  # noqa: F401

ADDRESS = "127.0.0.1"


# -- helpers -------------------------------------------------------------------------------------

def issue(lab, tmp_path, host, extra_hosts=(), cert_overrides=None, overrides=None):
    """Issue RSA + ECDSA certificates for host.example.test (+ extra names); returns the name."""
    lab.add_hosts("example.test", host)
    name = f"{host}.example.test"
    cert = {"alt_names": {"example.test": [host, *extra_hosts]}} if extra_hosts else {}
    cert.update(cert_overrides or {})
    config = make_config(tmp_path, lab, dict({"certificates": {name: cert}}, **(overrides or {})))
    assert_ok(run_acmebot(config))
    return config, name


def set_verify(config, name, verify):
    raw = json.loads(config.read_text())
    raw["certificates"][name]["verify"] = verify
    config.write_text(json.dumps(raw, indent=2))


def certs(tmp_path, name, key_types=KEY_TYPES):
    """(certificate file, private key file) pairs as acmebot installed them."""
    pairs = []
    for key_type in key_types:
        paths = default_paths(tmp_path, name, key_type)
        pairs.append((str(paths["certificate"]), str(paths["key"])))
    return pairs


def warnings_of(result):
    assert_clean(result)
    assert result.returncode == 0, result.stdout + result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("WARNING: ")]


def assert_verified(result):
    assert_ok(result)
    assert result.stdout == ""


def where(host, port, key_type):
    return f"{host} at {ADDRESS} port {port} ({key_type})"


def leaf_of(tmp_path, name, key_type):
    return x509.load_pem_x509_certificates(default_paths(tmp_path, name, key_type)["certificate"].read_bytes())


def foreign_certs(directory, name):
    """Self-signed RSA and ECDSA certificates for name (not acmebot's)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    pairs = []
    for key_type, key in (("rsa", rsa.generate_private_key(65537, 2048)),
                          ("ecdsa", ec.generate_private_key(ec.SECP256R1()))):
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=5))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
                .sign(key, hashes.SHA256()))
        cert_path, key_path = directory / f"{key_type}.pem", directory / f"{key_type}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        pairs.append((str(cert_path), str(key_path)))
    return pairs


def ocsp_response(lab, cert_path, status=ocsp.OCSPCertStatus.GOOD):
    """A real OCSP response for the leaf of cert_path, signed by pebble's intermediate."""
    chain = x509.load_pem_x509_certificates(Path(cert_path).read_bytes())
    leaf, issuer = chain[0], chain[1]
    assert x509.load_pem_x509_certificate(lab.pebble.intermediate_pem(0).encode()) == issuer
    issuer_key = serialization.load_pem_private_key(lab.pebble.intermediate_key_pem(0).encode(), None)
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    revoked = status == ocsp.OCSPCertStatus.REVOKED
    builder = (ocsp.OCSPResponseBuilder()
               .add_response(cert=leaf, issuer=issuer, algorithm=hashes.SHA1(), cert_status=status,
                             this_update=now - datetime.timedelta(minutes=1),
                             next_update=now + datetime.timedelta(days=2),
                             revocation_time=now - datetime.timedelta(hours=1) if revoked else None,
                             revocation_reason=x509.ReasonFlags.key_compromise if revoked else None)
               .responder_id(ocsp.OCSPResponderEncoding.HASH, issuer))
    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


# -- what is served differs ----------------------------------------------------------------------------

def test_verify_stale_certificate_warns_with_dates(lab, tmp_path, tls_servers):
    config, name = issue(lab, tmp_path, "vstale")
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    old = []
    for cert_path, key_path in certs(tmp_path, name):
        old.append((shutil.copy(cert_path, old_dir), shutil.copy(key_path, old_dir)))
    old_serials = {t: leaf_of(tmp_path, name, t)[0].serial_number for t in KEY_TYPES}
    assert_ok(run_acmebot(config, "--renew"))
    new_serials = {t: leaf_of(tmp_path, name, t)[0].serial_number for t in KEY_TYPES}
    port = tls_servers.https([name], old)
    set_verify(config, name, [port])
    warnings = warnings_of(run_acmebot(config, "--verify"))
    assert len(warnings) == 2, warnings
    for key_type in KEY_TYPES:
        line = next(w for w in warnings if where(name, port, key_type) in w)
        assert "serves the certificate issued " in line and f"(serial {old_serials[key_type]:x})" in line
        assert "expected the certificate issued " in line and f"(serial {new_serials[key_type]:x})" in line
        assert line.index(f"{old_serials[key_type]:x}") < line.index("expected")


def test_verify_missing_key_type_warns_for_that_type_only(lab, tmp_path, tls_servers):
    config, name = issue(lab, tmp_path, "vtype")
    port = tls_servers.https([name], certs(tmp_path, name, ["rsa"]))
    set_verify(config, name, [port])
    warnings = warnings_of(run_acmebot(config, "--verify"))
    assert len(warnings) == 1, warnings
    assert where(name, port, "ecdsa") in warnings[0]
    # restricted to rsa: nothing to say
    set_verify(config, name, [{"port": port, "key_types": ["rsa"]}])
    assert_verified(run_acmebot(config, "--verify"))


def test_verify_foreign_certificate_warns(lab, tmp_path, tls_servers):
    config, name = issue(lab, tmp_path, "vforeign")
    port = tls_servers.https([name], foreign_certs(tmp_path / "foreign", name))
    set_verify(config, name, [port])
    warnings = warnings_of(run_acmebot(config, "--verify"))
    assert len(warnings) == 2, warnings
    for key_type in KEY_TYPES:
        assert any(where(name, port, key_type) in w and "expected the certificate issued" in w
                   for w in warnings), warnings


def test_verify_hosts_and_key_types_restrictions(lab, tmp_path, tls_servers):
    # nodns.vhosts has no address record: checking it would warn
    config, name = issue(lab, tmp_path, "vhosts", extra_hosts=["nodns.vhosts"])
    port = tls_servers.https([name], certs(tmp_path, name, ["rsa"]))
    set_verify(config, name, [port])
    warnings = warnings_of(run_acmebot(config, "--verify"))
    assert any("nodns.vhosts.example.test" in w and "no address" in w for w in warnings), warnings
    assert any(where(name, port, "ecdsa") in w for w in warnings), warnings
    set_verify(config, name, [{"port": port, "hosts": [name], "key_types": ["rsa"]}])
    assert_verified(run_acmebot(config, "--verify"))


def test_verify_unreachable_port_warns_and_runs_after_changes_only(lab, tmp_path):
    lab.add_hosts("example.test", "vdown")
    name = "vdown.example.test"
    port = free_port()
    config = make_config(tmp_path, lab, {"certificates": {name: {"verify": [port]}}})
    first = run_acmebot(config)                  # issues, then verifies (something changed)
    warnings = warnings_of(first)
    assert "Issued certificate" in first.stdout
    assert len(warnings) == 2, warnings
    for key_type in KEY_TYPES:
        assert any(where(name, port, key_type) in w and "cannot connect" in w for w in warnings), warnings
    assert_verified(run_acmebot(config))         # nothing changed: no verification
    assert len(warnings_of(run_acmebot(config, "--verify"))) == 2


# -- OCSP staples ------------------------------------------------------------------------------------

def test_verify_ocsp_staple_checked_when_ocsp_file_exists(lab, tmp_path, tls_servers):
    config, name = issue(lab, tmp_path, "vocsp")
    pairs = certs(tmp_path, name)
    ocsp_dir = tmp_path / "ocsp"
    ocsp_dir.mkdir(exist_ok=True)
    staples = []
    for key_type, (cert_path, _) in zip(KEY_TYPES, pairs):
        path = ocsp_dir / f"{name}.{key_type}.ocsp"
        path.write_bytes(ocsp_response(lab, cert_path))
        staples.append(str(path))
    good = tls_servers.tls(pairs, stapling_files=staples)
    none = tls_servers.tls(pairs)
    revoked_file = tmp_path / "revoked.ocsp"
    revoked_file.write_bytes(ocsp_response(lab, pairs[0][0], ocsp.OCSPCertStatus.REVOKED))
    # rsa gets a revoked response, ecdsa none
    bad = tls_servers.tls(pairs, stapling_files=[str(revoked_file), None])
    set_verify(config, name, [good])
    assert_verified(run_acmebot(config, "--verify"))
    set_verify(config, name, [none, bad])
    warnings = warnings_of(run_acmebot(config, "--verify"))
    assert len(warnings) == 4, warnings
    for key_type in KEY_TYPES:
        assert any(where(name, none, key_type) in w and "no OCSP staple" in w for w in warnings), warnings
    assert any(where(name, bad, "rsa") in w and "revoked" in w for w in warnings), warnings
    assert any(where(name, bad, "ecdsa") in w and "no OCSP staple" in w for w in warnings), warnings


def test_verify_no_staple_expected_without_ocsp_file(lab, tmp_path, tls_servers):
    config, name = issue(lab, tmp_path, "vnostaple")
    port = tls_servers.tls(certs(tmp_path, name))
    set_verify(config, name, [port])
    assert not any((tmp_path / "ocsp").glob(f"{name}*")) if (tmp_path / "ocsp").exists() else True
    assert_verified(run_acmebot(config, "--verify"))


# -- STARTTLS ----------------------------------------------------------------------------------------

def test_verify_mail_starttls_smtp_imap_pop3(lab, tmp_path, tls_servers):
    config, name = issue(lab, tmp_path, "vmail")
    pairs = certs(tmp_path, name)
    ports = {protocol: tls_servers.mail(protocol, [name], pairs) for protocol in ("smtp", "imap", "pop3")}
    wrong = tls_servers.mail("smtp", [name], foreign_certs(tmp_path / "foreign", name))
    set_verify(config, name, [{"port": port, "starttls": protocol} for protocol, port in ports.items()])
    assert_verified(run_acmebot(config, "--verify"))
    set_verify(config, name, [{"port": port, "starttls": protocol} for protocol, port in ports.items()]
               + [{"port": wrong, "starttls": "smtp"}])
    warnings = warnings_of(run_acmebot(config, "--verify"))
    assert len(warnings) == 2, warnings
    assert all(f"port {wrong} " in w and "expected the certificate issued" in w for w in warnings), warnings


def test_verify_starttls_sieve_ftp_ldap_xmpp(lab, tmp_path, tls_servers):
    """Against dovecot (ManageSieve), vsftpd, slapd and prosody serving acmebot's files."""
    config, name = issue(lab, tmp_path, "vstarttls")
    pairs = certs(tmp_path, name)
    ports = {protocol: tls_servers.starttls(protocol, pairs) for protocol in ("sieve", "ftp", "xmpp")}
    verify = [{"port": port, "starttls": protocol} for protocol, port in ports.items()]
    # slapd holds one certificate: one slapd per key type, each checked for its own
    ldap = {key_type: tls_servers.starttls("ldap", [pair]) for key_type, pair in zip(KEY_TYPES, pairs)}
    verify += [{"port": port, "starttls": "ldap", "key_types": [key_type]} for key_type, port in ldap.items()]
    set_verify(config, name, verify)
    assert_verified(run_acmebot(config, "--verify"))
    # ldap with only the rsa certificate (for both key types), xmpp with foreign certificates
    xmpp = tls_servers.starttls("xmpp", foreign_certs(tmp_path / "foreign", name))
    set_verify(config, name, [{"port": ldap["rsa"], "starttls": "ldap"}, {"port": xmpp, "starttls": "xmpp"}])
    warnings = warnings_of(run_acmebot(config, "--verify"))
    assert len(warnings) == 3, warnings
    assert any(where(name, ldap["rsa"], "ecdsa") in w for w in warnings), warnings
    for key_type in KEY_TYPES:
        assert any(where(name, xmpp, key_type) in w and "expected the certificate issued" in w
                   for w in warnings), warnings


def test_verify_starttls_protocol_mismatch_warns(lab, tmp_path, tls_servers):
    """Speaking the wrong protocol (smtp to an imap server) is a warning, not a crash."""
    config, name = issue(lab, tmp_path, "vproto")
    port = tls_servers.mail("imap", [name], certs(tmp_path, name))
    set_verify(config, name, [{"port": port, "starttls": "pop3"}])
    warnings = warnings_of(run_acmebot(config, "--verify"))
    assert len(warnings) == 2 and all(f"port {port} " in w for w in warnings), warnings


# -- TLSA ----------------------------------------------------------------------------------------------

def test_verify_published_tlsa_records_must_match(lab, tmp_path, tls_servers):
    port = free_port()
    lab.add_hosts("example.test", "vtlsa")
    name = "vtlsa.example.test"
    config = make_config(tmp_path, lab, {"certificates": {name: {"tlsa_records": {"example.test": [
        {"host": "vtlsa", "port": port, "usage": "dane-ee", "selector": "spki"}]}}}})
    assert_ok(run_acmebot(config))
    owner = f"_{port}._tcp.{name}"
    assert len(served(lab, owner)) == 4
    tls_servers.https([name], certs(tmp_path, name), port=port)
    set_verify(config, name, [port])
    assert_verified(run_acmebot(config, "--verify"))
    # records for another key only
    other = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    message = lab.update("example.test")
    message.replace(f"_{port}._tcp.vtlsa", 300, "TLSA", tlsa("dane-ee", "spki", other))
    lab.send_update(message)
    warnings = warnings_of(run_acmebot(config, "--verify"))
    assert len(warnings) == 2, warnings
    for key_type in KEY_TYPES:
        assert any(where(name, port, key_type) in w and "TLSA" in w and owner in w for w in warnings), warnings


# -- protocol http: the Public-Key-Pins header ---------------------------------------------

def test_verify_https_with_hpkp_header_passes(lab, tmp_path, tls_servers):
    """nginx with both certificates (TLS 1.3 negotiated) and the HPKP include: the
    header check passes, and so does the plain int port form."""
    config, name = issue(lab, tmp_path, "vok")
    port = tls_servers.https([name], certs(tmp_path, name), include=tmp_path / "hpkp" / f"{name}.nginx")
    set_verify(config, name, [{"port": port, "protocol": "http"}])
    assert_verified(run_acmebot(config, "--verify"))
    # same server, plain int port form: no header check, still fine
    set_verify(config, name, [port])
    assert_verified(run_acmebot(config, "--verify"))


def test_verify_wrong_or_missing_pin_header_warns(lab, tmp_path, tls_servers):
    config, name = issue(lab, tmp_path, "vpin")
    wrong = tmp_path / "wrong-pins.conf"
    good = (tmp_path / "hpkp" / f"{name}.nginx").read_text()
    # one real pin replaced by another key's
    other = spki_of_key(default_paths(tmp_path, name, "rsa")["key"])
    real_pins = good.split('\\"')[1::2]
    bogus = base64.b64encode(hashlib.sha256(other + b"x").digest()).decode()
    wrong.write_text(good.replace(real_pins[0], bogus))
    port = tls_servers.https([name], certs(tmp_path, name), include=wrong)
    bare = tls_servers.https([name], certs(tmp_path, name))
    set_verify(config, name, [{"port": port, "protocol": "http"}, {"port": bare, "protocol": "http"}])
    warnings = warnings_of(run_acmebot(config, "--verify"))
    assert len(warnings) == 4, warnings
    for key_type in KEY_TYPES:
        assert any(where(name, port, key_type) in w and "Public-Key-Pins" in w
                   and "3 of 4" in w and "1 other" in w for w in warnings), warnings
        assert any(where(name, bare, key_type) in w and "no Public-Key-Pins header" in w for w in warnings), warnings
