"""Smoke tests of tests/lab/tls_servers.py: the servers serve the certificate the client's key
type asks for (TLS 1.2 and 1.3), staple what they are given, and send included headers."""

import datetime
import socket
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from lab.tls_servers import (DAEMON_PROTOCOLS, MAIL_PROTOCOLS, TLSProbeError, fetch_chain, read_pem_chain,
                             tls_probe)
from lab.tls_servers import tls_servers  # noqa: F401

NAME = "tls.example.test"
HOST = "127.0.0.1"
VERSIONS = ("1.2", "1.3")


def _write_key(path, key):
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _issue(ca_cert, ca_key, key, name, serial=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256()))


class Material:
    """A test CA (ECDSA, so the RSA leaf's chain is signed with another key type) and an
    RSA and an ECDSA certificate for tls.example.test; cert files hold leaf + CA."""

    def __init__(self, directory):
        now = datetime.datetime.now(datetime.timezone.utc)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tls_servers test CA")])
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name).issuer_name(ca_name)
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.ca_key, hashes.SHA256()))
        self.certs = {}
        self.leaves = {}
        self.staples = {}
        keys = {"rsa": rsa.generate_private_key(65537, 2048), "ecdsa": ec.generate_private_key(ec.SECP256R1())}
        ca_pem = self.ca_cert.public_bytes(serialization.Encoding.PEM)
        for key_type, key in keys.items():
            leaf = _issue(self.ca_cert, self.ca_key, key, NAME)
            cert_path = directory / f"{NAME}.{key_type}.pem"
            key_path = directory / f"{NAME}.{key_type}.key"
            cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + ca_pem)
            _write_key(key_path, key)
            self.certs[key_type] = (str(cert_path), str(key_path))
            self.leaves[key_type] = leaf
            staple = directory / f"{NAME}.{key_type}.ocsp"
            staple.write_bytes(self.ocsp_response(leaf))
            self.staples[key_type] = str(staple)

    def ocsp_response(self, leaf):
        now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        return (
            ocsp.OCSPResponseBuilder()
            .add_response(cert=leaf, issuer=self.ca_cert, algorithm=hashes.SHA1(),
                          cert_status=ocsp.OCSPCertStatus.GOOD, this_update=now,
                          next_update=now + datetime.timedelta(days=7),
                          revocation_time=None, revocation_reason=None)
            .responder_id(ocsp.OCSPResponderEncoding.HASH, self.ca_cert)
            .sign(self.ca_key, hashes.SHA256())
            .public_bytes(serialization.Encoding.DER))

    def both(self):
        return [self.certs["rsa"], self.certs["ecdsa"]]

    def chain(self, key_type):
        return read_pem_chain(self.certs[key_type][0])


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    return Material(tmp_path_factory.mktemp("tls-material"))


def _check_both(material, port, starttls=None):
    for version in VERSIONS:
        for key_type in ("rsa", "ecdsa"):
            probe = tls_probe(HOST, port, NAME, key_type, starttls=starttls, tls_version=version)
            assert probe.version == f"TLSv{version}"
            assert probe.chain == material.chain(key_type), (version, key_type)


def test_https_serves_the_key_type_asked_for(tls_servers, material):
    port = tls_servers.https([NAME], material.both())
    _check_both(material, port)


def test_https_single_certificate_and_wrong_key_type(tls_servers, material):
    # Only the ECDSA certificate: a client offering only RSA signature algorithms fails.
    port = tls_servers.https([NAME], [material.certs["ecdsa"]])
    assert fetch_chain(HOST, port, NAME, "ecdsa") == material.chain("ecdsa")
    with pytest.raises(TLSProbeError):
        fetch_chain(HOST, port, NAME, "rsa", tls_version="1.3")


def test_https_server_blocks_on_one_port_are_picked_by_sni(tls_servers, material):
    port = tls_servers.https([NAME], [material.certs["rsa"]])
    tls_servers.https(["other.example.test"], [material.certs["ecdsa"]], port=port)
    assert fetch_chain(HOST, port, "other.example.test", "ecdsa") == material.chain("ecdsa")
    assert fetch_chain(HOST, port, NAME, "rsa") == material.chain("rsa")


def test_https_staple_and_included_header(tls_servers, material, tmp_path):
    pins = 'pin-sha256="AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="; max-age=60'
    header = tmp_path / "hpkp.conf"
    header.write_text(f"add_header Public-Key-Pins '{pins}' always;\n")
    staple = material.staples["rsa"]
    port = tls_servers.https([NAME], material.both(), stapling_files=staple, include=header)
    expected = open(staple, "rb").read()
    for version in VERSIONS:
        for key_type in ("rsa", "ecdsa"):
            probe = tls_probe(HOST, port, NAME, key_type, tls_version=version, ocsp=True, http_path="/")
            assert probe.chain == material.chain(key_type)
            # nginx staples its single file for every certificate of the block
            assert probe.ocsp_staple == expected
            assert ocsp.load_der_ocsp_response(probe.ocsp_staple).serial_number == \
                material.leaves["rsa"].serial_number
            assert probe.http_status == 200
            assert probe.http_headers["public-key-pins"] == pins
    # no staple asked for, none received
    assert tls_probe(HOST, port, NAME, "rsa").ocsp_staple == b""


def test_https_rejects_per_certificate_staples(tls_servers, material):
    with pytest.raises(ValueError, match="one ssl_stapling_file"):
        tls_servers.https([NAME], material.both(),
                          stapling_files=[material.staples["rsa"], material.staples["ecdsa"]])


def test_https_without_stapling_sends_no_staple(tls_servers, material):
    port = tls_servers.https([NAME], material.both())
    assert tls_probe(HOST, port, NAME, "ecdsa", ocsp=True).ocsp_staple == b""


@pytest.mark.parametrize("protocol", MAIL_PROTOCOLS)
def test_mail_starttls(tls_servers, material, protocol):
    port = tls_servers.mail(protocol, [NAME], material.both())
    _check_both(material, port, starttls=protocol)


def test_mail_servers_side_by_side(tls_servers, material):
    ports = {protocol: tls_servers.mail(protocol, [NAME], [material.certs["rsa"]])
             for protocol in MAIL_PROTOCOLS}
    tls_servers.stop(ports["imap"])
    for protocol in ("smtp", "pop3"):
        assert fetch_chain(HOST, ports[protocol], NAME, "rsa", starttls=protocol) == material.chain("rsa")
    with pytest.raises(OSError):
        fetch_chain(HOST, ports["imap"], NAME, "rsa", starttls="imap")


@pytest.mark.parametrize("protocol", [p for p in DAEMON_PROTOCOLS if p != "ldap"])
def test_debian_server_starttls(tls_servers, material, protocol):
    """dovecot (ManageSieve), vsftpd and prosody serve an RSA and an ECDSA certificate side by
    side.  None of them staples an OCSP response from a file: per-key-type staples are tested
    on tls() ports."""
    port = tls_servers.starttls(protocol, material.both())
    _check_both(material, port, starttls=protocol)
    assert tls_probe(HOST, port, NAME, "rsa", starttls=protocol, ocsp=True).ocsp_staple == b""
    assert tls_servers.daemon(port).running()


def test_slapd_serves_one_certificate(tls_servers, material):
    """slapd loads one certificate: both key types over LDAP take one slapd each."""
    ports = {key_type: tls_servers.starttls("ldap", [material.certs[key_type]]) for key_type in ("rsa", "ecdsa")}
    for version in VERSIONS:
        for key_type, port in ports.items():
            probe = tls_probe(HOST, port, NAME, key_type, starttls="ldap", tls_version=version)
            assert probe.version == f"TLSv{version}"
            assert probe.chain == material.chain(key_type)
    with pytest.raises(TLSProbeError):
        fetch_chain(HOST, ports["rsa"], NAME, "ecdsa", starttls="ldap")
    with pytest.raises(ValueError, match="one server per key type"):
        tls_servers.starttls("ldap", material.both())


def test_debian_server_stops(tls_servers, material):
    port = tls_servers.starttls("ftp", [material.certs["rsa"]])
    assert fetch_chain(HOST, port, NAME, "rsa", starttls="ftp") == material.chain("rsa")
    tls_servers.stop(port)
    with pytest.raises(OSError):
        fetch_chain(HOST, port, NAME, "rsa", starttls="ftp")


def test_plain_tls_server_headers_and_staples(tls_servers, material):
    port = tls_servers.tls(material.both(), stapling_files=[material.staples["rsa"], material.staples["ecdsa"]],
                           headers={"Public-Key-Pins": 'pin-sha256="x"; max-age=1'})
    _check_both(material, port)
    for key_type in ("rsa", "ecdsa"):
        probe = tls_probe(HOST, port, NAME, key_type, ocsp=True, http_path="/")
        assert probe.ocsp_staple == open(material.staples[key_type], "rb").read()
        assert probe.http_headers["public-key-pins"] == 'pin-sha256="x"; max-age=1'
    assert tls_servers.server(port).errors == []


def test_python_ssl_cannot_force_the_key_type_in_tls13(tls_servers, material):
    """Why fetch_chain sets signature algorithms: Python's ssl has no such setting, and
    set_ciphers() restricting the TLS 1.2 authentication does not touch TLS 1.3."""
    port = tls_servers.https([NAME], material.both())
    assert not hasattr(ssl.SSLContext, "set_sigalgs")
    served = set()
    for ciphers in ("aRSA", "aECDSA"):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.set_ciphers(ciphers)
        with socket.create_connection((HOST, port), timeout=10) as sock:
            with context.wrap_socket(sock, server_hostname=NAME) as tls:
                served.add(tls.getpeercert(binary_form=True))
    assert len(served) == 1  # the same certificate whatever the cipher string says


def test_rejected_config_is_removed(tls_servers, material, tmp_path):
    with pytest.raises(Exception, match="nginx -t failed"):
        tls_servers.https([NAME], material.both(), include=tmp_path / "missing.conf")
    # the bad snippet is gone: the next server still comes up
    port = tls_servers.https([NAME], [material.certs["rsa"]])
    assert fetch_chain(HOST, port, NAME, "rsa") == material.chain("rsa")
