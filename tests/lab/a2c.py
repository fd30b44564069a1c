"""acme2certifier on loopback: a real ACME server with ARI (RFC 9773) and profiles.

acme2certifier (PyPI `acme2certifier`) lives in its own virtualenv, found through
$ACMEBOT_A2C_PYTHON or /opt/acmebot-test/a2c-venv/bin/python (tests/install-deps, run by ./demo and .ci/run, installs it there).
Its WSGI application runs in a subprocess of that python under wsgiref on
http://127.0.0.1:<free port>, with a sqlite database and the openssl CA handler signing
with a throwaway root + issuing CA made here.  Challenge validation is disabled
(ACME2CERTIFIER_I_KNOW_THE_RISK=1): any answered challenge becomes valid, so order
names need not resolve (acmebot still publishes dns-01 records in the lab's BIND).

Tests import the fixture explicitly:

    from a2c import a2c  # noqa: F401

    a2c.directory_url            http://127.0.0.1:PORT/directory
    a2c.port, a2c.base_url       the served port, http://127.0.0.1:PORT
    a2c.root_pem                 PEM text of the root the issued chains lead to
    a2c.root_path, a2c.issuer_pem, a2c.issuer_path
    a2c.cert_validity_days       validity of issued certificates (whole days)
    a2c.directory()              the directory object (dict)
    a2c.requests                 every JWS POST so far, oldest first: dicts with
                                 "path", "url", "protected", "payload" (decoded JSON or
                                 None for POST-as-GET), "status" (HTTP status answered)
    a2c.posted(path_suffix=None, since=0)
                                 the decoded payloads of POSTs whose path ends with
                                 path_suffix (e.g. "/neworders"), from requests[since:]
    a2c.new_order_payloads(since=0)   posted() for the directory's newOrder path
    a2c.orders(), a2c.certificates()  rows of the server's sqlite database (the profile an
                                 order was stored with: a2c does not echo it in the order)
    a2c.db_rows(sql, params=())  any read-only query on that database
    a2c.get_renewal_info(cert_pem)    (renewalInfo JSON, Retry-After) for a certificate;
                                 Retry-After is an int when numeric (None if absent)
    a2c.renewal_info_response(cert_pem)   the raw requests.Response
    ari_cert_id(cert_pem)        base64url(AKI keyIdentifier) "." base64url(serial DER)
    start_a2c(tmp_dir, **options)     another instance (e.g. cert_validity_days=1,
                                 renewal_threshold_pctg=..., extra_config={"Renewalinfo":
                                 {"renewal_force": True}}); stopped at session end

What acme2certifier (0.46.3) does, as found when this was written:
- `replaces` in newOrder is accepted and ignored, even for an unknown CertID (the
  certificate table's `replaced` flag is set only by a POST to renewalInfo).
- renewalInfo: suggestedWindow starts at issue + renewalthreshold_pctg % of the lifetime
  and ends at notAfter; Retry-After is retry_after_timeout.  extra_config=
  {"Renewalinfo": {"renewal_force": True}} makes every certificate due now (window
  [now + 1 day - 365 days, now + 1 day]).
- Profiles are labels: an unknown one is refused with invalidProfile, a known one is
  stored with the order (see orders()) but not echoed in the order object, and every
  profile gets the same certificate (cert_validity_days, whole days).
- Challenges must still be answered (an unanswered order never becomes ready), but
  nothing is checked; authorizations are not reused between orders.
- wsgiref serves one request at a time (HTTP/1.0, no keep-alive).
"""

import atexit
import base64
import datetime
import json
import os
import sqlite3
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lab import START_TIMEOUT, LabError, Server, free_port, log_tail

A2C_PYTHON_ENV = "ACMEBOT_A2C_PYTHON"
DEFAULT_A2C_PYTHON = "/opt/acmebot-test/a2c-venv/bin/python"
WSGI_MODULE = "acme2certifier.share.acme2certifier_wsgi"
INSTALL_HINT = ("install it with: python3 -m venv /opt/acmebot-test/a2c-venv && "
                "/opt/acmebot-test/a2c-venv/bin/pip install acme2certifier "
                f"(or set {A2C_PYTHON_ENV} to a python that has it)")

DEFAULT_PROFILES = {
    "classic": "the default certificate profile",
    "shortlived": "short-lived certificates",
}

# The program run by the venv's python: acme2certifier's WSGI application behind a
# middleware that logs every POST (JWS decoded) as one JSON line, under wsgiref.
SERVE_PY = r'''
import base64, io, json, sys
from wsgiref.simple_server import make_server

port, request_log = int(sys.argv[1]), sys.argv[2]
import importlib
app = importlib.import_module(sys.argv[3])  # reads $ACME_SRV_CONFIGFILE at import


def b64url_decode(text):
    text = text or ""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def logged(environ, start_response):
    if environ.get("REQUEST_METHOD") != "POST":
        return app.application(environ, start_response)
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    entry = {"path": environ.get("PATH_INFO"), "url": None, "protected": None,
             "payload": None, "status": None}
    try:
        jws = json.loads(body)
        entry["protected"] = json.loads(b64url_decode(jws.get("protected")))
        entry["url"] = entry["protected"].get("url")
        payload = b64url_decode(jws.get("payload"))
        entry["payload"] = json.loads(payload) if payload else None
    except Exception as error:
        entry["decode_error"] = repr(error)

    def recording_start_response(status, headers, exc_info=None):
        entry["status"] = int(status.split()[0])
        return start_response(status, headers, exc_info)

    try:
        return app.application(environ, recording_start_response)
    finally:
        with open(request_log, "a", encoding="utf-8") as log:
            log.write(json.dumps(entry) + "\n")


server = make_server("127.0.0.1", port, logged, handler_class=app.get_handler_cls())
print(f"a2c serving on 127.0.0.1:{port}", flush=True)
server.serve_forever()
'''


class A2CError(LabError):
    """acme2certifier could not be started or answered unexpectedly."""


_python_checked = {}


def find_a2c_python():
    """The venv python that has acme2certifier, or None with the reason."""
    python = os.environ.get(A2C_PYTHON_ENV) or DEFAULT_A2C_PYTHON
    if python not in _python_checked:
        if not os.access(python, os.X_OK):
            _python_checked[python] = (None, f"{python} not found")
        else:
            check = subprocess.run([python, "-c", "import acme2certifier.acme_srv.version as v; "
                                    "print(v.__version__)"],
                                   capture_output=True, text=True, timeout=60)
            if check.returncode != 0:
                _python_checked[python] = (None, f"{python} cannot import acme2certifier: "
                                                 f"{check.stderr.strip()[-300:]}")
            else:
                _python_checked[python] = (python, check.stdout.strip())
    return _python_checked[python]


def require_a2c_python():
    """find_a2c_python(), failing when it is missing: the README's commands
    install it, so a missing one is a missing install step, never a skip."""
    python, detail = find_a2c_python()
    if python is None:
        pytest.fail(f"acme2certifier is not available ({detail}); {INSTALL_HINT}", pytrace=False)
    return python


# -- certificates -------------------------------------------------------------------------

def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _load_cert(cert):
    if isinstance(cert, x509.Certificate):
        return cert
    if isinstance(cert, str):
        cert = cert.encode()
    if cert.lstrip().startswith(b"-----"):
        return x509.load_pem_x509_certificate(cert)  # the first certificate of a chain
    return x509.load_der_x509_certificate(cert)


def ari_cert_id(cert_pem):
    """The RFC 9773 CertID of a certificate (PEM text/bytes, DER or x509.Certificate)."""
    cert = _load_cert(cert_pem)
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    serial = cert.serial_number
    serial_der = serial.to_bytes(serial.bit_length() // 8 + 1, "big")  # DER INTEGER content
    return f"{b64url(aki.key_identifier)}.{b64url(serial_der)}"


def make_ca(directory):
    """A throwaway root, an issuing CA under it and an (empty) CRL of the issuing CA.

    Returns a dict of paths: root_cert, issuing_cert, issuing_key, issuing_crl.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def ca_cert(name, key, issuer_name, issuer_key, path_length):
        return (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                           critical=False)
            .sign(issuer_key, hashes.SHA256())
        )

    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "acmebot tests"),
                           x509.NameAttribute(NameOID.COMMON_NAME, "acmebot test a2c root")])
    root = ca_cert(root_name, root_key, root_name, root_key, None)
    issuing_key = ec.generate_private_key(ec.SECP256R1())
    issuing_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "acmebot tests"),
                              x509.NameAttribute(NameOID.COMMON_NAME, "acmebot test a2c issuing CA")])
    issuing = ca_cert(issuing_name, issuing_key, root_name, root_key, 0)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuing_name)
        .last_update(now)
        .next_update(now + datetime.timedelta(days=30))
        .sign(issuing_key, hashes.SHA256())
    )
    paths = {
        "root_cert": directory / "root-ca-cert.pem",
        "issuing_cert": directory / "sub-ca-cert.pem",
        "issuing_key": directory / "sub-ca-key.pem",
        "issuing_crl": directory / "sub-ca-crl.pem",
    }
    paths["root_cert"].write_bytes(root.public_bytes(serialization.Encoding.PEM))
    paths["issuing_cert"].write_bytes(issuing.public_bytes(serialization.Encoding.PEM))
    paths["issuing_key"].write_bytes(issuing_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    paths["issuing_key"].chmod(0o600)
    paths["issuing_crl"].write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return paths


# -- the server -----------------------------------------------------------------------------

def _cfg_value(value):
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


class A2C:
    """One running acme2certifier (see start_a2c)."""

    def __init__(self, directory, *, name="a2c", python=None, cert_validity_days=90,
                 renewal_threshold_pctg=85, retry_after_timeout=3600, profiles=None,
                 extra_config=None, extra_env=None, debug=False, timeout=START_TIMEOUT):
        self.name = name
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.python = python or require_a2c_python()
        self.cert_validity_days = int(cert_validity_days)
        self.profiles = dict(DEFAULT_PROFILES if profiles is None else profiles)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.directory_url = f"{self.base_url}/directory"
        self.request_log = self.dir / "requests.jsonl"
        self.request_log.touch()
        self.log_path = self.dir / "a2c.log"

        ca = make_ca(self.dir / "ca")
        self.root_path = ca["root_cert"]
        self.issuer_path = ca["issuing_cert"]
        self.root_pem = self.root_path.read_text()
        self.issuer_pem = self.issuer_path.read_text()
        cert_dir = self.dir / "certs"
        cert_dir.mkdir(exist_ok=True)

        config = {
            "DEFAULT": {"debug": debug},
            "Nonce": {"nonce_check_disable": False},
            "Account": {"contact_check_disable": False},
            "Directory": {"server_name": f"127.0.0.1:{self.port}",
                          "tos_url": f"{self.base_url}/tos"},
            "DBhandler": {"handler": "wsgi", "dbfile": self.dir / "acme_srv.db"},
            "CAhandler": {
                "handler_module": "acme2certifier.cahandlers.openssl_ca_handler",
                "issuing_ca_key": ca["issuing_key"],
                "issuing_ca_cert": ca["issuing_cert"],
                "issuing_ca_crl": ca["issuing_crl"],
                "cert_save_path": cert_dir,
                "ca_cert_chain_list": [],  # chain = leaf + issuing CA (no root)
                "cert_validity_days": self.cert_validity_days,
            },
            "Challenge": {"challenge_validation_disable": True},
            "Order": {"profiles": self.profiles, "profiles_check_disable": False,
                      "tnauthlist_support": False},
            "Renewalinfo": {"renewalthreshold_pctg": renewal_threshold_pctg,
                            "retry_after_timeout": retry_after_timeout},
        }
        for section, values in (extra_config or {}).items():
            config.setdefault(section, {}).update(values)
        self.config = config
        self.config_path = self.dir / "acme_srv.cfg"
        self.config_path.write_text("".join(
            f"[{section}]\n" + "".join(f"{key}: {_cfg_value(value)}\n" for key, value in values.items())
            + "\n" for section, values in config.items()))
        serve_py = self.dir / "serve_a2c.py"
        serve_py.write_text(SERVE_PY)

        env = dict(os.environ)
        for variable in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PYTHONPATH", "PYTHONHOME"):
            env.pop(variable, None)
        env.update({"ACME_SRV_CONFIGFILE": str(self.config_path),
                    "ACME2CERTIFIER_I_KNOW_THE_RISK": "1",
                    "PYTHONUNBUFFERED": "1",
                    "PYTHONDONTWRITEBYTECODE": "1"})
        env.update({key: str(value) for key, value in (extra_env or {}).items()})

        started = time.monotonic()
        self.server = Server(f"acme2certifier {name}",
                             [self.python, serve_py, self.port, self.request_log, WSGI_MODULE],
                             self.log_path, env=env, cwd=self.dir)
        try:
            self.server.wait_ready(self._ready, timeout=timeout)
        except Exception:
            self.server.stop()
            raise
        self.startup_seconds = time.monotonic() - started

    def _ready(self):
        response = requests.get(self.directory_url, timeout=5)
        return response.status_code == 200 and "newOrder" in response.json()

    def __repr__(self):
        return f"<A2C {self.name} {self.directory_url} pid={self.pid}>"

    @property
    def pid(self):
        return self.server.pid

    def running(self):
        return self.server.running()

    def stop(self):
        self.server.stop()

    def directory(self):
        response = requests.get(self.directory_url, timeout=10)
        response.raise_for_status()
        return response.json()

    # -- what clients posted
    @property
    def requests(self):
        """Every POST so far (oldest first), as logged by the middleware."""
        entries = []
        with open(self.request_log, encoding="utf-8") as log:
            for line in log:
                if line.strip():
                    entries.append(json.loads(line))
        return entries

    def posted(self, path_suffix=None, since=0):
        """Decoded payloads of POSTs (path ending with path_suffix), from requests[since:]."""
        return [entry["payload"] for entry in self.requests[since:]
                if path_suffix is None or (entry["path"] or "").endswith(path_suffix)]

    def new_order_payloads(self, since=0):
        path = urllib.parse.urlsplit(self.directory()["newOrder"]).path
        return self.posted(path, since=since)

    # -- the server's database (read-only)
    def db_rows(self, sql, params=()):
        """Rows (as dicts) of a query on acme2certifier's sqlite database, opened read-only."""
        connection = sqlite3.connect(f"file:{self.dir / 'acme_srv.db'}?mode=ro", uri=True, timeout=10)
        try:
            connection.row_factory = sqlite3.Row
            return [dict(row) for row in connection.execute(sql, params)]
        finally:
            connection.close()

    def orders(self):
        """Orders as stored (oldest first): name, identifiers (list), profile, status."""
        rows = self.db_rows('SELECT orders.name AS name, orders.identifiers AS identifiers, '
                            'orders.profile AS profile, status.name AS status FROM orders '
                            'JOIN status ON status.id = orders.status_id ORDER BY orders.id')
        for row in rows:
            row["identifiers"] = json.loads(row["identifiers"])
        return rows

    def certificates(self):
        """Issued certificates as stored (oldest first): name, order, serial, aki,
        issue_uts, expire_uts, replaced (set only by a renewalInfo POST, not by
        newOrder `replaces`), cert (PEM chain)."""
        return self.db_rows('SELECT certificate.name AS name, orders.name AS "order", '
                            'certificate.serial AS serial, certificate.aki AS aki, '
                            'certificate.issue_uts AS issue_uts, certificate.expire_uts AS expire_uts, '
                            'certificate.replaced AS replaced, certificate.cert AS cert '
                            'FROM certificate JOIN orders ON orders.id = certificate.order_id '
                            'WHERE certificate.cert IS NOT NULL ORDER BY certificate.id')

    # -- ARI
    def renewal_info_url(self, cert_pem):
        return f"{self.directory()['renewalInfo'].rstrip('/')}/{ari_cert_id(cert_pem)}"

    def renewal_info_response(self, cert_pem):
        return requests.get(self.renewal_info_url(cert_pem), timeout=10)

    def get_renewal_info(self, cert_pem):
        """(renewalInfo JSON, Retry-After) for the certificate; raises A2CError unless 200."""
        response = self.renewal_info_response(cert_pem)
        if response.status_code != 200:
            raise A2CError(f"renewalInfo {response.url}: HTTP {response.status_code}: {response.text}")
        retry_after = response.headers.get("Retry-After")
        if retry_after is not None and retry_after.strip().isdigit():
            retry_after = int(retry_after)
        return response.json(), retry_after

    def log_tail(self, lines=40):
        return log_tail(self.log_path, lines)


_instances = []
_instances_lock = threading.Lock()


def start_a2c(tmp_dir, **options):
    """Start an acme2certifier instance with its state under tmp_dir (see A2C for options).

    Every instance is stopped (by PID) at the end of the session.
    """
    instance = A2C(tmp_dir, **options)
    with _instances_lock:
        _instances.append(instance)
    return instance


def stop_all():
    with _instances_lock:
        instances, _instances[:] = list(_instances), []
    for instance in instances:
        instance.stop()


atexit.register(stop_all)  # for instances started by tests that did not use the fixture


@pytest.fixture(scope="session")
def a2c(tmp_path_factory):
    """The session's acme2certifier (90-day certificates, profiles classic/shortlived)."""
    require_a2c_python()
    try:
        yield start_a2c(tmp_path_factory.mktemp("a2c"), name="a2c")
    finally:
        stop_all()
