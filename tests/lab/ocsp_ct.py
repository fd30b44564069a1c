"""Loopback OCSP responder and Certificate Transparency logs for acmebot's tests.

Import the fixtures explicitly in a test module (they are not in conftest.py):

    from ocsp_ct import ocsp_pebble, ct_log  # noqa: F401

OCSP
----
pebble puts an AIA OCSP URL into the certificates it issues (`ocspResponderURL`) but
answers no OCSP itself.  `ocsp_pebble` (session) first starts `OCSPResponder`, a threaded
stdlib HTTP server on 127.0.0.1, then a second pebble ("ocsp") whose certificates point
at it.  The responder answers RFC 6960 requests (POST of the DER request, or
GET /<base64 request>) with responses built by cryptography's OCSPResponseBuilder and
signed with that pebble's intermediate key (management /intermediate-keys/0 and
/intermediates/0); the status comes from pebble's /cert-status-by-serial/<hex>
(Valid -> GOOD, Revoked -> REVOKED with pebble's time and reason, unknown serial ->
UNKNOWN).  Requests for another issuer get an `unauthorized` OCSP response.

That pebble validates challenges normally (no PEBBLE_VA_ALWAYS_VALID): acmebot runs
against it exercise the same http-01/dns-01 paths as against the default pebble.

    ocsp_pebble.url / .responder_url_for_config   "http://127.0.0.1:<port>/"
    ocsp_pebble.pebble                             the lab.Pebble instance ("ocsp")
    ocsp_pebble.directory_url, .ca_bundle          of that pebble
    ocsp_pebble.issuer                             pebble's intermediate (x509.Certificate)
    ocsp_pebble.set_mode(mode)                     returns the previous mode
    ocsp_pebble.temporary_mode(mode)               context manager, restores the mode
    ocsp_pebble.mode                               the current mode
    ocsp_pebble.validity                           next_update - this_update (timedelta, 1 day)
    ocsp_pebble.requests                           number of HTTP requests received
    ocsp_pebble.served                             [{"method", "serial", "mode", "status"}...]
    ocsp_pebble.reset()                            mode "normal", validity 1 day, counters 0
    ocsp_pebble.forged_cert, .delegated_cert       the signers of those modes

Modes: "normal"; "forged" (signed by a freshly generated key of the issuer's key type
whose self-signed cert has the issuer's subject name and is included in the response:
neither the issuer nor a delegated responder); "wrong-cert" (a GOOD response for
serial + 1); "expired" (this_update 2 days ago, next_update 1 day ago); "down"
(listening socket closed: connection refused; re-opened on the same port when the
mode changes); "error" (HTTP 500); "try-later" (OCSP responseStatus tryLater); "delegated" (a valid response
signed by a delegated responder certificate issued by the intermediate with the
id-kp-OCSPSigning EKU, included in the response).  The fixture is session-scoped, so
the mode persists between tests: use `temporary_mode` or call `reset()`.

Certificate Transparency
------------------------
No runnable RFC 6962 log server exists in Debian or PyPI (nor npm) for this machine:
Google's Trillian/CTFE needs a database and is not packaged, and cryptography can parse
SCTs but has no builder for them.  So `CTLog` is a minimal RFC 6962 log written here:
POST <url>ct/v1/add-chain with {"chain": [base64 DER, ...]} returns

    {"sct_version": 0, "id": base64(log_id), "timestamp": ms, "extensions": "",
     "signature": base64(DigitallySigned)}

where the signature is ECDSA P-256/SHA-256 over exactly the RFC 6962 section 3.2
structure for an x509_entry (see `sct_signed_data`) and DigitallySigned is the TLS
encoding (hash sha256(4), signature ecdsa(3), opaque<0..2^16-1>).  log_id is SHA-256
of the log's SubjectPublicKeyInfo DER.  The same leaf submitted again gets the same SCT
(as real logs do).  POST ct/v1/add-pre-chain answers 400 (precertificates are not
supported); nothing is merged into a tree (no get-sth, get-entries...).

    ct_log.logs                           {name: CTLog}; "log1" and "log2" are started
    ct_log.start_ct_log(name, mode)       another log (stopped at session end)
    ct_log.reset()                        all logs "normal", submissions cleared
    log.url                               "http://127.0.0.1:<port>/"
    log.key_b64, log.log_id_b64           base64 of the SPKI DER / of its SHA-256
    log.public_key, log.log_id            the objects/bytes
    log.set_mode("normal"|"down"|"bad-signature"|"error")   returns the previous mode
    log.submissions                       [[der, ...], ...] chains accepted by add-chain
    log.pre_submissions                   bodies posted to add-pre-chain
    log.requests                          number of HTTP requests received

"bad-signature" answers a well-formed SCT whose signature is over another timestamp;
"error" answers HTTP 500; "down" closes the socket (connection refused).

Helpers: sct_signed_data, verify_sct, serialize_sct, serialize_sct_list.
`start_ct_log(name, mode)` at module level starts a log outside the fixture (caller
stops it with .stop()).
"""

import base64
import binascii
import contextlib
import datetime
import hashlib
import http.server
import json
import re
import socket
import struct
import threading
import time
import urllib.parse

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

OCSP_MODES = ("normal", "forged", "wrong-cert", "expired", "down", "error", "try-later", "delegated")
CT_MODES = ("normal", "down", "bad-signature", "error")
DEFAULT_CT_LOGS = ("log1", "log2")

# RFC 5280 CRLReason codes (as pebble reports them) -> cryptography's flags.
REASONS = {
    0: x509.ReasonFlags.unspecified,
    1: x509.ReasonFlags.key_compromise,
    2: x509.ReasonFlags.ca_compromise,
    3: x509.ReasonFlags.affiliation_changed,
    4: x509.ReasonFlags.superseded,
    5: x509.ReasonFlags.cessation_of_operation,
    6: x509.ReasonFlags.certificate_hold,
    8: x509.ReasonFlags.remove_from_crl,
    9: x509.ReasonFlags.privilege_withdrawn,
    10: x509.ReasonFlags.aa_compromise,
}

_GO_TIME = re.compile(
    r"^(\d{4}-\d{2}-\d{2}) (\d{2}:\d{2}:\d{2})(?:\.(\d+))? ([+-]\d{4})(?: \S+)?(?: m=[+-][\d.]+)?$")


def parse_go_time(text):
    """Parse Go's time.String() ("2006-01-02 15:04:05.999999999 -0700 MST m=+1.5")."""
    match = _GO_TIME.match(text.strip())
    if not match:
        raise ValueError(f"not a Go time.String(): {text!r}")
    day, clock, fraction, offset = match.groups()
    micro = (fraction or "0")[:6].ljust(6, "0")
    return datetime.datetime.strptime(f"{day} {clock}.{micro} {offset}", "%Y-%m-%d %H:%M:%S.%f %z")


def _now():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


# -- a restartable loopback HTTP server ----------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so no kept-alive connection outlives "down".
    protocol_version = "HTTP/1.0"

    def log_message(self, format, *args):  # noqa: A002 (stdlib signature)
        pass

    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self):
        self._dispatch("GET", b"")

    def do_POST(self):
        self._dispatch("POST", self._body())

    def _dispatch(self, method, body):
        try:
            status, content_type, payload = self.server.owner.handle(method, self.path, self.headers, body)
        except Exception as error:  # a bug here must show up as a 500, not a hang
            status, content_type, payload = 500, "text/plain", f"internal error: {error!r}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 that can be closed ("down") and re-opened on
    the same port.  Subclasses implement handle(method, path, headers, body) ->
    (status, content_type, payload)."""

    MODES: tuple = ("normal",)
    KIND = "server"

    def set_mode(self, mode):
        if mode not in self.MODES:
            raise ValueError(f"unknown {self.KIND} mode {mode!r} (one of {', '.join(self.MODES)})")
        with self._lock:
            previous, self.mode = self.mode, mode
            self._set_listening(mode != "down")
        return previous

    @contextlib.contextmanager
    def temporary_mode(self, mode):
        previous = self.set_mode(mode)
        try:
            yield self
        finally:
            self.set_mode(previous)

    def __init__(self, port=0):
        self._lock = threading.RLock()
        self._server = None
        self._thread = None
        self.port = port
        self.requests = 0
        self._open()

    def _open(self):
        server = _HTTPServer(("127.0.0.1", self.port), _Handler)
        server.owner = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"{type(self).__name__}:{self.port}", daemon=True)
        self._thread.start()

    def _close(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = None

    @property
    def listening(self):
        return self._server is not None

    def _set_listening(self, listening):
        with self._lock:
            if listening and self._server is None:
                self._open()
            elif not listening and self._server is not None:
                self._close()

    def stop(self):
        with self._lock:
            self._close()


# -- OCSP ---------------------------------------------------------------------------------------

def _self_signed(name, key, days=30):
    now = _now()
    return (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))


def _der_tlv(data, offset):
    """(tag, content start, content end) of the DER element at offset."""
    tag, length = data[offset], data[offset + 1]
    start = offset + 2
    if length & 0x80:
        size = length & 0x7F
        length = int.from_bytes(data[start:start + size], "big")
        start += size
    return tag, start, start + length


def _subject_public_key_bits(public_key):
    """The subjectPublicKey BIT STRING contents (what an OCSP CertID's issuerKeyHash hashes)."""
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    _, start, _ = _der_tlv(spki, 0)                  # SubjectPublicKeyInfo SEQUENCE
    _, _, algorithm_end = _der_tlv(spki, start)      # AlgorithmIdentifier
    tag, bits_start, bits_end = _der_tlv(spki, algorithm_end)
    if tag != 0x03 or spki[bits_start] != 0:
        raise ValueError("unexpected SubjectPublicKeyInfo layout")
    return spki[bits_start + 1:bits_end]             # skip the unused-bits octet


class OCSPResponder(LoopbackServer):
    MODES = OCSP_MODES
    KIND = "OCSP"
    """RFC 6960 responder for one issuer, with statuses looked up by `status_lookup(serial)`
    (returns pebble's cert-status dict, or None for an unknown serial).  Call
    `set_issuer(cert, key)` before the first request."""

    def __init__(self, status_lookup=None, validity=datetime.timedelta(days=1)):
        self.status_lookup = status_lookup
        self.default_validity = validity
        self.validity = validity
        self.mode = "normal"
        self.served = []
        self.issuer = None
        self.issuer_key = None
        self.forged_key = self.forged_cert = None
        self.delegated_key = self.delegated_cert = None
        super().__init__()
        self.url = f"http://127.0.0.1:{self.port}/"

    @property
    def responder_url_for_config(self):
        return self.url

    def set_issuer(self, issuer_cert, issuer_key):
        self.issuer, self.issuer_key = issuer_cert, issuer_key
        # "forged": a stranger that claims the issuer's name, with its own self-signed cert
        # and a key of the issuer's type (so only the signature check can tell).
        if isinstance(issuer_key, rsa.RSAPrivateKey):
            self.forged_key = rsa.generate_private_key(65537, issuer_key.key_size)
        else:
            self.forged_key = ec.generate_private_key(ec.SECP256R1())
        self.forged_cert = _self_signed(issuer_cert.subject, self.forged_key)
        # "delegated": a proper RFC 6960 4.2.2.2 delegated responder, issued by the issuer.
        self.delegated_key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        self.delegated_cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acmebot test OCSP responder")]))
            .issuer_name(issuer_cert.subject)
            .public_key(self.delegated_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
            .add_extension(x509.OCSPNoCheck(), critical=False)
            .sign(issuer_key, hashes.SHA256()))
        self._issuer_hashes = {}

    def reset(self):
        with self._lock:
            self.set_mode("normal")
            self.validity = self.default_validity
            self.requests = 0
            self.served.clear()

    def _hashes_for(self, algorithm):
        """(issuer_name_hash, issuer_key_hash) of our issuer with the request's algorithm."""
        key = algorithm.name
        if key not in self._issuer_hashes:
            def digest(data):
                h = hashes.Hash(algorithm)
                h.update(data)
                return h.finalize()
            self._issuer_hashes[key] = (digest(self.issuer.subject.public_bytes()),
                                        digest(_subject_public_key_bits(self.issuer.public_key())))
        return self._issuer_hashes[key]

    def _decode(self, method, path, body):
        if method == "POST":
            return body
        encoded = urllib.parse.unquote(urllib.parse.urlsplit(path).path.lstrip("/"))
        # Some clients send URL-safe base64 or drop the padding.
        encoded = encoded.replace("-", "+").replace("_", "/")
        return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)

    def handle(self, method, path, headers, body):
        with self._lock:
            self.requests += 1
            mode, validity = self.mode, self.validity
        record = {"method": method, "serial": None, "mode": mode, "status": None}
        self.served.append(record)
        if mode == "error":
            record["status"] = "http-500"
            return 500, "text/plain", b"OCSP responder error (test mode)\n"
        ocsp_type = "application/ocsp-response"
        if mode == "try-later":
            record["status"] = "tryLater"
            return 200, ocsp_type, self._unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER)
        try:
            request = ocsp.load_der_ocsp_request(self._decode(method, path, body))
            serial = request.serial_number
        except (ValueError, binascii.Error):
            record["status"] = "malformedRequest"
            return 200, ocsp_type, self._unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        record["serial"] = serial
        if (request.issuer_name_hash, request.issuer_key_hash) != self._hashes_for(request.hash_algorithm):
            record["status"] = "unauthorized"
            return 200, ocsp_type, self._unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)

        now = _now()
        this_update, next_update = now, now + validity
        if mode == "expired":
            this_update, next_update = now - datetime.timedelta(days=2), now - datetime.timedelta(days=1)
        answered_serial = serial + 1 if mode == "wrong-cert" else serial

        status, revoked_at, reason = ocsp.OCSPCertStatus.UNKNOWN, None, None
        info = self.status_lookup(answered_serial) if mode != "wrong-cert" else {"Status": "Valid"}
        if info is not None:
            if info.get("Status") == "Revoked":
                status = ocsp.OCSPCertStatus.REVOKED
                revoked_at = parse_go_time(info["RevokedAt"]).astimezone(datetime.timezone.utc)
                revoked_at = revoked_at.replace(microsecond=0)
                reason = REASONS.get(int(info.get("Reason") or 0), x509.ReasonFlags.unspecified)
            elif info.get("Status") == "Valid":
                status = ocsp.OCSPCertStatus.GOOD
        record["status"] = status.name

        signer_cert, signer_key, extra_certs = self.issuer, self.issuer_key, []
        if mode == "forged":
            signer_cert, signer_key, extra_certs = self.forged_cert, self.forged_key, [self.forged_cert]
        elif mode == "delegated":
            signer_cert, signer_key, extra_certs = self.delegated_cert, self.delegated_key, [self.delegated_cert]
        name_hash, key_hash = self._hashes_for(request.hash_algorithm)
        builder = (ocsp.OCSPResponseBuilder()
                   .add_response_by_hash(name_hash, key_hash, answered_serial, request.hash_algorithm,
                                         status, this_update, next_update, revoked_at, reason)
                   .responder_id(ocsp.OCSPResponderEncoding.HASH, signer_cert))
        if extra_certs:
            builder = builder.certificates(extra_certs)
        with contextlib.suppress(x509.ExtensionNotFound):
            nonce = request.extensions.get_extension_for_class(x509.OCSPNonce).value
            builder = builder.add_extension(nonce, critical=False)
        response = builder.sign(signer_key, hashes.SHA256())
        return 200, ocsp_type, response.public_bytes(serialization.Encoding.DER)

    @staticmethod
    def _unsuccessful(status):
        return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(serialization.Encoding.DER)


class OCSPPebble:
    """What the `ocsp_pebble` fixture yields: the responder plus the pebble it serves."""

    def __init__(self, responder, pebble):
        self.responder = responder
        self.pebble = pebble
        self.url = responder.url
        self.responder_url_for_config = responder.url
        self.ca_bundle = pebble.ca_bundle
        self.directory_url = pebble.directory_url

    # Delegated to the responder so that tests read one object.
    issuer = property(lambda self: self.responder.issuer)
    forged_cert = property(lambda self: self.responder.forged_cert)
    delegated_cert = property(lambda self: self.responder.delegated_cert)
    mode = property(lambda self: self.responder.mode)
    requests = property(lambda self: self.responder.requests)
    served = property(lambda self: self.responder.served)

    @property
    def validity(self):
        return self.responder.validity

    @validity.setter
    def validity(self, value):
        self.responder.validity = value

    def set_mode(self, mode):
        return self.responder.set_mode(mode)

    def temporary_mode(self, mode):
        return self.responder.temporary_mode(mode)

    def reset(self):
        self.responder.reset()


def _pebble_status(pebble):
    def lookup(serial):
        try:
            return pebble.cert_status(serial)
        except requests.HTTPError as error:
            if error.response is not None and error.response.status_code == 404:
                return None
            raise
    return lookup


_OCSP_PEBBLES = {}      # one per lab, however many test modules import the fixture


@pytest.fixture(scope="session")
def ocsp_pebble(lab):
    if id(lab) in _OCSP_PEBBLES:
        yield _OCSP_PEBBLES[id(lab)]
        return
    responder = OCSPResponder()
    try:
        pebble = lab.start_pebble("ocsp", extra_config={"ocspResponderURL": responder.url})
        issuer = x509.load_pem_x509_certificate(pebble.intermediate_pem().encode())
        issuer_key = serialization.load_pem_private_key(pebble.intermediate_key_pem().encode(), None)
        responder.status_lookup = _pebble_status(pebble)
        responder.set_issuer(issuer, issuer_key)
        _OCSP_PEBBLES[id(lab)] = OCSPPebble(responder, pebble)
        yield _OCSP_PEBBLES[id(lab)]
    finally:
        _OCSP_PEBBLES.pop(id(lab), None)
        responder.stop()


# -- Certificate Transparency --------------------------------------------------------------------

def sct_signed_data(timestamp, leaf_der, extensions=b""):
    """The RFC 6962 section 3.2 digitally-signed structure for an x509_entry."""
    if not 1 <= len(leaf_der) < 2 ** 24:
        raise ValueError("ASN.1Cert must be 1..2^24-1 bytes")
    return (struct.pack(">BBQH", 0, 0, timestamp, 0)        # v1, certificate_timestamp, ts, x509_entry
            + len(leaf_der).to_bytes(3, "big") + leaf_der
            + struct.pack(">H", len(extensions)) + extensions)


def _digitally_signed(signature):
    return struct.pack(">BBH", 4, 3, len(signature)) + signature   # sha256, ecdsa


def _parse_digitally_signed(data):
    hash_alg, sig_alg, length = struct.unpack(">BBH", data[:4])
    if len(data) != 4 + length:
        raise ValueError("DigitallySigned length mismatch")
    return hash_alg, sig_alg, data[4:]


def verify_sct(sct, leaf_der, key_b64):
    """Check an add-chain response (dict) against the leaf and the log's base64 SPKI.
    Raises InvalidSignature or ValueError; returns None when it verifies."""
    public_key = serialization.load_der_public_key(base64.b64decode(key_b64))
    if sct["sct_version"] != 0:
        raise ValueError(f"sct_version {sct['sct_version']}")
    if base64.b64decode(sct["id"]) != hashlib.sha256(base64.b64decode(key_b64)).digest():
        raise ValueError("log id is not SHA-256 of the log key")
    hash_alg, sig_alg, signature = _parse_digitally_signed(base64.b64decode(sct["signature"]))
    if (hash_alg, sig_alg) != (4, 3):
        raise ValueError(f"unexpected algorithms hash={hash_alg} sig={sig_alg}")
    data = sct_signed_data(int(sct["timestamp"]), leaf_der, base64.b64decode(sct["extensions"]))
    public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))


def serialize_sct(sct):
    """The TLS SignedCertificateTimestamp (RFC 6962 section 3.2) of an add-chain response:
    the bytes of a .sct file as served by TLS servers."""
    log_id = base64.b64decode(sct["id"])
    extensions = base64.b64decode(sct["extensions"])
    return (struct.pack(">B", sct["sct_version"]) + log_id + struct.pack(">Q", int(sct["timestamp"]))
            + struct.pack(">H", len(extensions)) + extensions + base64.b64decode(sct["signature"]))


def serialize_sct_list(serialized_scts):
    """SignedCertificateTimestampList (RFC 6962 section 3.3) of serialized SCTs."""
    body = b"".join(struct.pack(">H", len(item)) + item for item in serialized_scts)
    return struct.pack(">H", len(body)) + body


class CTLog(LoopbackServer):
    MODES = CT_MODES
    KIND = "CT log"
    """A minimal RFC 6962 log on 127.0.0.1 (see the module docstring)."""

    def __init__(self, name, mode="normal"):
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.public_key = self.key.public_key()
        spki = self.public_key.public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        self.key_der = spki
        self.key_b64 = base64.b64encode(spki).decode()
        self.log_id = hashlib.sha256(spki).digest()
        self.log_id_b64 = base64.b64encode(self.log_id).decode()
        self.submissions = []
        self.pre_submissions = []
        self._timestamps = {}   # leaf DER -> timestamp of its SCT
        self.mode = "normal"
        super().__init__()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.set_mode(mode)

    def reset(self):
        with self._lock:
            self.set_mode("normal")
            self.submissions.clear()
            self.pre_submissions.clear()
            self._timestamps.clear()
            self.requests = 0

    def sign(self, timestamp, leaf_der, extensions=b""):
        return self.key.sign(sct_signed_data(timestamp, leaf_der, extensions), ec.ECDSA(hashes.SHA256()))

    @staticmethod
    def _json(status, obj):
        return status, "application/json", json.dumps(obj).encode()

    def handle(self, method, path, headers, body):
        with self._lock:
            self.requests += 1
            mode = self.mode
        if mode == "error":
            return 500, "text/plain", b"CT log error (test mode)\n"
        path = urllib.parse.urlsplit(path).path
        if path == "/ct/v1/add-pre-chain" and method == "POST":
            self.pre_submissions.append(body)
            return self._json(400, {"error_message": "precertificates are not accepted by this test log",
                                    "success": False})
        if path != "/ct/v1/add-chain":
            return self._json(404, {"error_message": f"unknown path {path}", "success": False})
        if method != "POST":
            return self._json(405, {"error_message": "use POST", "success": False})
        try:
            chain = [base64.b64decode(item, validate=True) for item in json.loads(body)["chain"]]
            if not chain:
                raise ValueError("empty chain")
            for der in chain:
                x509.load_der_x509_certificate(der)
        except (ValueError, KeyError, TypeError, binascii.Error) as error:
            return self._json(400, {"error_message": f"bad chain: {error}", "success": False})
        with self._lock:
            self.submissions.append(chain)
            leaf = chain[0]
            timestamp = self._timestamps.setdefault(leaf, int(time.time() * 1000))
        signed_timestamp = timestamp + 1 if mode == "bad-signature" else timestamp
        signature = self.sign(signed_timestamp, leaf)
        return self._json(200, {
            "sct_version": 0,
            "id": self.log_id_b64,
            "timestamp": timestamp,
            "extensions": "",
            "signature": base64.b64encode(_digitally_signed(signature)).decode(),
        })


def start_ct_log(name, mode="normal"):
    """A running CTLog; the caller stops it (the ct_log fixture does for its logs)."""
    return CTLog(name, mode)


class CTLogs:
    """What the `ct_log` fixture yields."""

    def __init__(self):
        self.logs = {}

    def start_ct_log(self, name, mode="normal"):
        if name in self.logs:
            raise ValueError(f"CT log {name!r} already started")
        log = self.logs[name] = start_ct_log(name, mode)
        return log

    def reset(self):
        for log in self.logs.values():
            log.reset()

    def stop(self):
        for log in self.logs.values():
            log.stop()


@pytest.fixture(autouse=True)
def fresh_modes(ocsp_pebble, ct_log):
    """Autouse in every module that imports it: the fixtures are session-scoped, so
    each test starts from (and leaves) the "normal" modes."""
    ocsp_pebble.reset()
    ct_log.reset()
    yield
    ocsp_pebble.reset()
    ct_log.reset()


@pytest.fixture(scope="session")
def ct_log():
    logs = CTLogs()
    try:
        for name in DEFAULT_CT_LOGS:
            logs.start_ct_log(name)
        yield logs
    finally:
        logs.stop()


def connection_refused(url, timeout=5):
    """True if nothing listens on url's host:port (for "down" checks)."""
    parts = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout):
            return False
    except ConnectionRefusedError:
        return True
