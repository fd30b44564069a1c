"""Smoke tests of the loopback OCSP responder and CT logs in ocsp_ct.py (not of acmebot).

A certificate is issued by the "ocsp" pebble with the acme library (http-01 through the
lab's nginx and BIND, validated for real), then checked with real OCSP requests and
submitted to the test CT logs.
"""

import base64
import datetime
import hashlib
import uuid

import josepy as jose
import pytest
import requests
from acme import challenges, client, crypto_util, messages
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from lab.ocsp_ct import (  # noqa: F401 (fixtures)
    connection_refused, ct_log, fresh_modes, ocsp_pebble, parse_go_time, sct_signed_data, serialize_sct,
    serialize_sct_list, verify_sct)

SCT_LIST_OID = x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")


# -- issuing with the acme library ----------------------------------------------------------------

@pytest.fixture(scope="module")
def acme_client(ocsp_pebble):
    key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    net = client.ClientNetwork(key, alg=jose.ES256, verify_ssl=ocsp_pebble.ca_bundle,
                               user_agent="acmebot-tests/ocsp_ct")
    directory = client.ClientV2.get_directory(ocsp_pebble.directory_url, net)
    acme = client.ClientV2(directory, net)
    acme.new_account(messages.NewRegistration.from_data(email="admin@example.test",
                                                        terms_of_service_agreed=True))
    return acme


def issue(lab, acme):
    """(certificate, issuer certificate) for a fresh name, validated by http-01."""
    host = f"ocsp{uuid.uuid4().hex[:8]}"
    lab.add_hosts("example.test", host)
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    order = acme.new_order(crypto_util.make_csr(key_pem, [f"{host}.example.test"]))
    for authz in order.authorizations:
        chall = next(c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01))
        response, validation = chall.response_and_validation(acme.net.key)
        (lab.http_challenge_dir / chall.chall.encode("token")).write_text(validation)
        acme.answer_challenge(chall, response)
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=90)
    order = acme.poll_and_finalize(order, deadline)
    certs = x509.load_pem_x509_certificates(order.fullchain_pem.encode())
    return certs[0], certs[1]


@pytest.fixture(scope="module")
def issued(lab, acme_client):
    return issue(lab, acme_client)


# -- OCSP helpers -------------------------------------------------------------------------------------

def ocsp_url(cert):
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    return [d.access_location.value for d in aia if d.access_method == AuthorityInformationAccessOID.OCSP]


def ocsp_request(cert, issuer, nonce=None, algorithm=None):
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm or hashes.SHA1())
    if nonce:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def query(url, der, method="POST"):
    if method == "POST":
        response = requests.post(url, data=der, headers={"Content-Type": "application/ocsp-request"},
                                 timeout=10)
    else:
        response = requests.get(url.rstrip("/") + "/" + requests.utils.quote(base64.b64encode(der).decode(),
                                                                              safe=""), timeout=10)
    response.raise_for_status()
    assert response.headers["Content-Type"] == "application/ocsp-response"
    return ocsp.load_der_ocsp_response(response.content)


def verify_signed_by(response, signer):
    """Raises InvalidSignature unless `signer` (certificate) signed the OCSP response."""
    public_key = signer.public_key()
    if isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(response.signature, response.tbs_response_bytes, padding.PKCS1v15(),
                          response.signature_hash_algorithm)
    else:
        public_key.verify(response.signature, response.tbs_response_bytes,
                          ec.ECDSA(response.signature_hash_algorithm))


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


# -- OCSP tests ---------------------------------------------------------------------------------------

def test_go_time_parsing():
    parsed = parse_go_time("2025-03-04 05:06:07.123456789 +0000 UTC m=+12.345678901")
    assert parsed == datetime.datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=datetime.timezone.utc)
    parsed = parse_go_time("2025-03-04 07:06:07 +0200 EET")
    assert parsed == datetime.datetime(2025, 3, 4, 5, 6, 7, tzinfo=datetime.timezone.utc)


def test_certificate_carries_responder_url(ocsp_pebble, issued):
    cert, issuer = issued
    assert ocsp_url(cert) == [ocsp_pebble.url]
    assert ocsp_pebble.responder_url_for_config == ocsp_pebble.url
    cert.verify_directly_issued_by(issuer)
    assert issuer == ocsp_pebble.issuer


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_good_status_signed_by_issuer(ocsp_pebble, issued, method):
    cert, issuer = issued
    nonce = uuid.uuid4().bytes
    response = query(ocsp_url(cert)[0], ocsp_request(cert, issuer, nonce), method)
    assert response.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    verify_signed_by(response, issuer)
    assert response.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert response.serial_number == cert.serial_number
    assert response.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(issuer.public_key()).digest
    assert response.certificates == []
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    assert abs(response.this_update_utc - utcnow()) < datetime.timedelta(minutes=1)
    assert response.next_update_utc - response.this_update_utc == datetime.timedelta(days=1)
    assert ocsp_pebble.requests == 1
    assert ocsp_pebble.served == [{"method": method, "serial": cert.serial_number, "mode": "normal",
                                   "status": "GOOD"}]


def test_sha256_certid_and_validity(ocsp_pebble, issued):
    cert, issuer = issued
    ocsp_pebble.validity = datetime.timedelta(hours=3)
    response = query(ocsp_pebble.url, ocsp_request(cert, issuer, algorithm=hashes.SHA256()))
    verify_signed_by(response, issuer)
    assert response.hash_algorithm.name == "sha256"
    assert response.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert response.next_update_utc - response.this_update_utc == datetime.timedelta(hours=3)


def test_revoked_through_acme(lab, ocsp_pebble, acme_client):
    cert, issuer = issue(lab, acme_client)
    before = utcnow().replace(microsecond=0)
    acme_client.revoke(cert, 1)   # keyCompromise
    assert ocsp_pebble.pebble.cert_status(cert.serial_number)["Status"] == "Revoked"
    response = query(ocsp_pebble.url, ocsp_request(cert, issuer))
    verify_signed_by(response, issuer)
    assert response.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_reason == x509.ReasonFlags.key_compromise
    assert before <= response.revocation_time_utc <= utcnow()


def test_forged_signature_does_not_verify_with_issuer(ocsp_pebble, issued):
    cert, issuer = issued
    ocsp_pebble.set_mode("forged")
    response = query(ocsp_pebble.url, ocsp_request(cert, issuer))
    assert response.certificate_status == ocsp.OCSPCertStatus.GOOD
    with pytest.raises(InvalidSignature):
        verify_signed_by(response, issuer)
    # It is signed by the stranger it includes, which pretends to have the issuer's name.
    assert response.certificates == [ocsp_pebble.forged_cert]
    verify_signed_by(response, ocsp_pebble.forged_cert)
    assert ocsp_pebble.forged_cert.subject == issuer.subject
    with pytest.raises(InvalidSignature):
        ocsp_pebble.forged_cert.verify_directly_issued_by(issuer)


def test_delegated_responder_is_valid(ocsp_pebble, issued):
    cert, issuer = issued
    with ocsp_pebble.temporary_mode("delegated"):
        response = query(ocsp_pebble.url, ocsp_request(cert, issuer))
    assert ocsp_pebble.mode == "normal"
    responder = response.certificates[0]
    verify_signed_by(response, responder)
    responder.verify_directly_issued_by(issuer)
    eku = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.OCSP_SIGNING in eku
    assert response.certificate_status == ocsp.OCSPCertStatus.GOOD


def test_wrong_cert(ocsp_pebble, issued):
    cert, issuer = issued
    ocsp_pebble.set_mode("wrong-cert")
    response = query(ocsp_pebble.url, ocsp_request(cert, issuer))
    verify_signed_by(response, issuer)
    assert response.serial_number != cert.serial_number


def test_expired(ocsp_pebble, issued):
    cert, issuer = issued
    ocsp_pebble.set_mode("expired")
    response = query(ocsp_pebble.url, ocsp_request(cert, issuer))
    verify_signed_by(response, issuer)
    assert response.next_update_utc < utcnow()
    assert response.this_update_utc < response.next_update_utc


def test_down_error_and_back(ocsp_pebble, issued):
    cert, issuer = issued
    der = ocsp_request(cert, issuer)
    assert ocsp_pebble.set_mode("down") == "normal"
    assert connection_refused(ocsp_pebble.url)
    with pytest.raises(requests.ConnectionError):
        requests.post(ocsp_pebble.url, data=der, timeout=10)
    ocsp_pebble.set_mode("error")
    assert requests.post(ocsp_pebble.url, data=der, timeout=10).status_code == 500
    ocsp_pebble.set_mode("try-later")
    assert query(ocsp_pebble.url, der).response_status == ocsp.OCSPResponseStatus.TRY_LATER
    ocsp_pebble.set_mode("normal")
    assert query(ocsp_pebble.url, der).certificate_status == ocsp.OCSPCertStatus.GOOD
    assert ocsp_pebble.requests == 3   # nothing was received while down


def test_other_issuer_and_garbage(ocsp_pebble, issued, lab):
    cert, _ = issued
    other_issuer = x509.load_pem_x509_certificate(lab.pebble.intermediate_pem().encode())
    response = query(ocsp_pebble.url, ocsp_request(cert, other_issuer))
    assert response.response_status == ocsp.OCSPResponseStatus.UNAUTHORIZED
    response = query(ocsp_pebble.url, b"not an OCSP request")
    assert response.response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_unknown_serial(ocsp_pebble, issued):
    cert, issuer = issued
    der = (ocsp.OCSPRequestBuilder()
           .add_certificate_by_hash(*_issuer_hashes(issuer), cert.serial_number ^ 0xFFFF, hashes.SHA1())
           .build().public_bytes(serialization.Encoding.DER))
    response = query(ocsp_pebble.url, der)
    verify_signed_by(response, issuer)
    assert response.certificate_status == ocsp.OCSPCertStatus.UNKNOWN


def _issuer_hashes(issuer):
    name_hash = hashlib.sha1(issuer.subject.public_bytes()).digest()
    key_hash = x509.SubjectKeyIdentifier.from_public_key(issuer.public_key()).digest  # SHA-1 of the key bits
    return name_hash, key_hash


# -- CT tests -------------------------------------------------------------------------------------------

def der_octet_string(data):
    length = len(data)
    if length < 0x80:
        header = bytes([length])
    else:
        size = (length.bit_length() + 7) // 8
        header = bytes([0x80 | size]) + length.to_bytes(size, "big")
    return b"\x04" + header + data


def submit(log, chain):
    body = {"chain": [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in chain]}
    return requests.post(log.url + "ct/v1/add-chain", json=body, timeout=10)


def test_ct_add_chain_sct_verifies(ct_log, issued):
    cert, issuer = issued
    leaf = cert.public_bytes(serialization.Encoding.DER)
    log = ct_log.logs["log1"]
    assert log.url.endswith("/")
    assert base64.b64decode(log.log_id_b64) == hashlib.sha256(base64.b64decode(log.key_b64)).digest()
    response = submit(log, [cert, issuer])
    assert response.status_code == 200, response.text
    sct = response.json()
    assert set(sct) == {"sct_version", "id", "timestamp", "extensions", "signature"}
    assert sct["sct_version"] == 0 and sct["extensions"] == "" and sct["id"] == log.log_id_b64
    assert abs(sct["timestamp"] / 1000 - utcnow().timestamp()) < 60
    verify_sct(sct, leaf, log.key_b64)
    # The same check by hand, over the RFC 6962 3.2 bytes.
    signed = base64.b64decode(sct["signature"])
    assert signed[:2] == b"\x04\x03" and int.from_bytes(signed[2:4], "big") == len(signed) - 4
    public_key = serialization.load_der_public_key(base64.b64decode(log.key_b64))
    expected = (b"\x00\x00" + sct["timestamp"].to_bytes(8, "big") + b"\x00\x00"
                + len(leaf).to_bytes(3, "big") + leaf + b"\x00\x00")
    assert sct_signed_data(sct["timestamp"], leaf) == expected
    public_key.verify(signed[4:], expected, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):   # not valid for another log's key
        verify_sct(dict(sct, id=ct_log.logs["log2"].log_id_b64), leaf, ct_log.logs["log2"].key_b64)
    assert log.submissions == [[leaf, issuer.public_bytes(serialization.Encoding.DER)]]
    assert ct_log.logs["log2"].submissions == []
    # Resubmission gives the same SCT timestamp.
    assert submit(log, [cert, issuer]).json()["timestamp"] == sct["timestamp"]


def test_ct_sct_list_parses_with_cryptography(ct_log, issued):
    cert, issuer = issued
    scts = [submit(ct_log.logs[name], [cert, issuer]).json() for name in ("log1", "log2")]
    sct_list = serialize_sct_list([serialize_sct(s) for s in scts])
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sct carrier")])
    carrier = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(1)
               .not_valid_before(utcnow() - datetime.timedelta(days=1))
               .not_valid_after(utcnow() + datetime.timedelta(days=1))
               .add_extension(x509.UnrecognizedExtension(SCT_LIST_OID, der_octet_string(sct_list)),
                              critical=False)
               .sign(key, hashes.SHA256()))
    carrier = x509.load_der_x509_certificate(carrier.public_bytes(serialization.Encoding.DER))
    parsed = list(carrier.extensions.get_extension_for_class(x509.PrecertificateSignedCertificateTimestamps).value)
    assert [p.log_id for p in parsed] == [ct_log.logs[n].log_id for n in ("log1", "log2")]
    for p, sct in zip(parsed, scts):
        assert p.version == x509.certificate_transparency.Version.v1
        assert isinstance(p.signature_hash_algorithm, hashes.SHA256)
        assert p.signature_algorithm == x509.certificate_transparency.SignatureAlgorithm.ECDSA
        assert p.signature == base64.b64decode(sct["signature"])[4:]
        assert p.extension_bytes == b""
        assert int(p.timestamp.replace(tzinfo=datetime.timezone.utc).timestamp() * 1000) == sct["timestamp"]


def test_ct_modes(ct_log, issued):
    cert, issuer = issued
    leaf = cert.public_bytes(serialization.Encoding.DER)
    log = ct_log.start_ct_log(f"extra{uuid.uuid4().hex[:6]}", mode="bad-signature")
    assert ct_log.logs[log.name] is log
    sct = submit(log, [cert, issuer]).json()
    with pytest.raises(InvalidSignature):
        verify_sct(sct, leaf, log.key_b64)
    assert log.set_mode("down") == "bad-signature"
    assert connection_refused(log.url)
    with pytest.raises(requests.ConnectionError):
        submit(log, [cert, issuer])
    log.set_mode("error")
    assert submit(log, [cert, issuer]).status_code == 500
    log.set_mode("normal")
    verify_sct(submit(log, [cert, issuer]).json(), leaf, log.key_b64)
    body = {"chain": [base64.b64encode(leaf).decode()]}
    assert requests.post(log.url + "ct/v1/add-pre-chain", json=body, timeout=10).status_code == 400
    assert len(log.pre_submissions) == 1
    assert requests.post(log.url + "ct/v1/add-chain", json={"chain": ["!!"]}, timeout=10).status_code == 400
    assert requests.post(log.url + "ct/v1/add-chain", json={"chain": []}, timeout=10).status_code == 400
    assert requests.get(log.url + "ct/v1/get-sth", timeout=10).status_code == 404


def test_down_refuses_pooled_connections(ct_log):
    """A requests.Session that talked to a log before "down" is refused afterwards too."""
    log = ct_log.logs["log2"]
    with requests.Session() as session:
        assert session.get(log.url + "ct/v1/get-sth", timeout=10).status_code == 404
        log.set_mode("down")
        with pytest.raises(requests.ConnectionError):
            session.get(log.url + "ct/v1/get-sth", timeout=10)
