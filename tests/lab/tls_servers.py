"""TLS servers for installation-verification tests, and the client side to probe them.

Tests import what they use explicitly (conftest.py does not re-export it):

    from lab.tls_servers import tls_servers  # noqa: F401   (the fixture)
    from lab.tls_servers import fetch_chain, tls_probe

Fixture `tls_servers` (function scope, bound to the session `lab`); every method returns the
port (127.0.0.1) and waits until that port serves each given certificate:

    https(server_names, certs, port=None, stapling_files=None, include=None, extra=None)
        an nginx `server {}` (in lab.nginx_conf_dir) listening on 127.0.0.1:port ssl, TLS 1.2
        and 1.3, one ssl_certificate/ssl_certificate_key pair per (cert_path, key_path) of
        `certs` (nginx keeps one certificate per key type and picks by the client's signature
        algorithms).  `location /` answers 200 "ok".  Several https() calls may share a
        port (nginx then picks the server block by SNI).
        stapling_files: None, one path, or a list parallel to `certs`.  nginx 1.22 has ONE
        `ssl_stapling_file` per server block and staples that same file for every certificate
        of the block (it does not check that the response matches the certificate), so a
        list must name one file for all certificates; for a different staple per key type
        (or a staple for one key type only) use tls_servers.tls(), which staples per
        certificate.
        include: a path or list of paths -> `include <path>;` lines (e.g. a file holding
        `add_header Public-Key-Pins "..." always;`); extra: a string or list of raw lines.
    mail(protocol, server_names, certs, port=None)
        nginx mail proxy (protocol smtp, imap or pop3) with `starttls on;` in one `mail {}`
        block in lab.nginx_main_conf_dir (nginx allows only one mail {} block: this fixture
        owns the file tls-servers-mail.conf; nothing else may drop a mail {} block there).
        auth_http points at a loopback HTTP endpoint started by the fixture that answers
        `Auth-Status: Invalid login` (no login is ever made).  The greeting uses
        server_names[0].  nginx's mail module has no OCSP stapling.
    starttls(protocol, certs, port=None, server_names=None)
        the real server Debian ships for that protocol, started in the foreground with a
        configuration of its own (in a directory under the lab's root) and serving the
        certificate files where they are:
            sieve  dovecot with dovecot-managesieved   RSA and ECDSA side by side
            ftp    vsftpd (AUTH TLS)                   RSA and ECDSA side by side
            ldap   slapd (StartTLS)                    ONE certificate: one slapd per key type
            xmpp   prosody (c2s STARTTLS), a VirtualHost per name of server_names (default:
                   the certificates' DNS names)        RSA and ECDSA side by side
        None of them staples an OCSP response read from a file, and no login can succeed.
        daemon(port) is its lab.Server (.running(), .log_path).
    tls(certs, port=None, stapling_files=None, headers=None)
        a TLS server in Python (pyOpenSSL) serving every certificate of `certs` (chosen by
        the client's signature algorithms, like nginx) that answers one HTTP request per
        connection with 200 "ok" plus `headers` ({name: value}).  It is there for what no
        Debian server does: a different staple per certificate.  stapling_files: None, one
        path (all certificates), or a list parallel to `certs` whose entries may be None
        (no staple for that certificate).
    stop(port)    remove that server now (nginx snippets are dropped and nginx reloaded)

Teardown removes the fixture's nginx snippets, reloads nginx, stops its other servers.

Any certificate files can be passed: a test simulating a stale certificate, the wrong key
type or a missing staple simply passes other files than the ones acmebot installed.

Client side (pyOpenSSL, so the whole served chain is returned, which Python 3.11's `ssl`
cannot do):

    fetch_chain(host, port, server_name, key_type, starttls=None, tls_version=None)
        -> [DER bytes of each certificate the server sent, leaf first]
    tls_probe(host, port, server_name, key_type, starttls=None, tls_version=None,
              ocsp=False, http_path=None) -> Probe(chain, version, ocsp_staple, http_status,
              http_headers)
    key_type is "rsa" or "ecdsa"; starttls is None or one of STARTTLS_PROTOCOLS; tls_version
    None (1.2 or 1.3, negotiated), "1.2" or "1.3".

Forcing the server's key type: in TLS 1.3 the cipher suites do not name a key type, so
the only thing that makes a server holding both an RSA and an ECDSA certificate send one
of them is the client's signature_algorithms extension.  pyOpenSSL has no API for it, but
cryptography's OpenSSL binding exports SSL_CTX_set1_sigalgs_list, which works on the
SSL_CTX that pyOpenSSL wraps (see _client_context):

    from cryptography.hazmat.bindings.openssl.binding import Binding
    ctx = OpenSSL.SSL.Context(OpenSSL.SSL.TLS_CLIENT_METHOD)
    Binding.lib.SSL_CTX_set1_sigalgs_list(ctx._context, b"rsa_pss_rsae_sha256:...") == 1

The same list forces the choice in TLS 1.2 too (OpenSSL's server only considers a
certificate for which the client offered a usable signature algorithm).  Python's own
`ssl` module (3.11) has no way to set signature algorithms, and set_ciphers() only touches
the TLS <= 1.2 cipher list, so it cannot force the key type in TLS 1.3.

Every STARTTLS protocol acmebot speaks is served by a real server: smtp, imap and pop3 by
nginx's mail proxy, sieve, ftp, ldap and xmpp by dovecot, vsftpd, slapd and prosody
(tests/install-deps installs them with a policy-rc.d that keeps Debian from starting their
system services).  The only server written here is tls(), for per-certificate staples.
"""

import contextlib
import dataclasses
import http.server
import itertools
import socket
import struct
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.bindings.openssl.binding import Binding
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from OpenSSL import SSL

from lab import LabError, Server, free_port, wait_for

MAIL_PROTOCOLS = ("smtp", "imap", "pop3")            # nginx's mail proxy
DAEMON_PROTOCOLS = ("sieve", "ftp", "ldap", "xmpp")  # dovecot, vsftpd, slapd, prosody
STARTTLS_PROTOCOLS = MAIL_PROTOCOLS + DAEMON_PROTOCOLS
KEY_TYPES = ("rsa", "ecdsa")

# Signature algorithms a client offers to make the server use one key type.  TLS 1.3
# signs with RSA-PSS only (rsa_pss_rsae_*); rsa_pkcs1_* keeps TLS 1.2 servers happy.
SIGALGS = {
    "rsa": "rsa_pss_rsae_sha256:rsa_pss_rsae_sha384:rsa_pss_rsae_sha512:"
           "rsa_pkcs1_sha256:rsa_pkcs1_sha384:rsa_pkcs1_sha512",
    "ecdsa": "ecdsa_secp256r1_sha256:ecdsa_secp384r1_sha384:ecdsa_secp521r1_sha512",
}
TLS_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}

IO_TIMEOUT = 10.0  # seconds for any single read or write
LDAP_STARTTLS_OID = b"1.3.6.1.4.1.1466.20037"
XMPP_TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"
_lib = Binding.lib


class TLSProbeError(RuntimeError):
    """The STARTTLS exchange or the TLS handshake did not go through."""


# -- certificate file helpers ------------------------------------------------------------------

def read_pem_chain(path):
    """DER bytes of each certificate in a PEM file, in file order."""
    return [cert.public_bytes(serialization.Encoding.DER)
            for cert in x509.load_pem_x509_certificates(Path(path).read_bytes())]


def key_type_of(cert_path):
    """'rsa' or 'ecdsa' for the first certificate of a PEM file."""
    key = x509.load_pem_x509_certificates(Path(cert_path).read_bytes())[0].public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return "rsa"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ecdsa"
    raise ValueError(f"{cert_path}: neither an RSA nor an ECDSA certificate")


def _as_list(value):
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [value]
    return list(value)


def _stapling_list(stapling_files, certs):
    """stapling_files (None, one path, or a list parallel to certs) as a parallel list."""
    if stapling_files is None:
        return [None] * len(certs)
    if isinstance(stapling_files, (str, Path)):
        return [stapling_files] * len(certs)
    files = list(stapling_files)
    if len(files) != len(certs):
        raise ValueError(f"stapling_files has {len(files)} entries for {len(certs)} certificates")
    return files


# -- line-oriented plaintext I/O (never reads past what the peer sent before waiting) -----------

class _Plain:
    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""

    def send(self, data):
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def _more(self):
        chunk = self.sock.recv(4096)
        if not chunk:
            raise TLSProbeError(f"connection closed; received so far: {self.buffer!r}")
        self.buffer += chunk

    def line(self):
        while b"\n" not in self.buffer:
            self._more()
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.rstrip(b"\r").decode(errors="replace")

    def until(self, *markers):
        """Read until one of the markers appears; return everything up to and including it."""
        while True:
            hits = [(self.buffer.find(m), m) for m in markers if m in self.buffer]
            if hits:
                index, marker = min(hits)
                end = index + len(marker)
                text, self.buffer = self.buffer[:end], self.buffer[end:]
                return text.decode(errors="replace")
            self._more()

    def exact(self, count):
        while len(self.buffer) < count:
            self._more()
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def check_drained(self):
        if self.buffer:
            raise TLSProbeError(f"unexpected data before TLS: {self.buffer!r}")


# -- minimal BER for LDAP StartTLS ------------------------------------------------------------

def _ber(tag, content):
    length = len(content)
    if length < 0x80:
        encoded = bytes([length])
    else:
        raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
        encoded = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + encoded + content


def _ber_read(plain):
    """(tag, content) of one BER element from the stream (definite lengths only)."""
    tag = plain.exact(1)[0]
    first = plain.exact(1)[0]
    if first < 0x80:
        length = first
    else:
        length = int.from_bytes(plain.exact(first & 0x7F), "big")
    return tag, plain.exact(length)


def _ber_split(content):
    """List of (tag, content) of the elements concatenated in content."""
    items = []
    while content:
        tag, first = content[0], content[1]
        offset = 2
        if first < 0x80:
            length = first
        else:
            count = first & 0x7F
            length = int.from_bytes(content[2:2 + count], "big")
            offset += count
        items.append((tag, content[offset:offset + length]))
        content = content[offset + length:]
    return items


def ldap_starttls_request(message_id=1):
    """LDAPMessage { messageID, [APPLICATION 23] ExtendedRequest { [0] StartTLS OID } }."""
    return _ber(0x30, _ber(0x02, bytes([message_id])) + _ber(0x77, _ber(0x80, LDAP_STARTTLS_OID)))


# -- client side: STARTTLS preambles and the probe ------------------------------------------------

def _expect(condition, what, got):
    if not condition:
        raise TLSProbeError(f"{what}: got {got!r}")


def _reply(plain, code, what):
    """A whole (possibly multi-line, "220-...") SMTP/FTP reply with this code."""
    while True:
        line = plain.line()
        _expect(line.startswith(code), what, line)
        if line[3:4] != "-":
            return line


def _client_preamble(plain, protocol, server_name):
    """Speak the client side of `protocol` up to the point where TLS starts."""
    if protocol == "smtp":
        _reply(plain, "220", "SMTP greeting")
        plain.send("EHLO acmebot.test\r\n")
        capabilities = []
        while True:
            line = plain.line()
            _expect(line.startswith("250"), "SMTP EHLO reply", line)
            capabilities.append(line[4:].upper())
            if line[3:4] != "-":
                break
        _expect("STARTTLS" in capabilities, "SMTP EHLO capabilities", capabilities)
        plain.send("STARTTLS\r\n")
        line = plain.line()
        _expect(line.startswith("220"), "SMTP STARTTLS reply", line)
    elif protocol == "imap":
        line = plain.line()
        _expect(line.startswith("* OK"), "IMAP greeting", line)
        plain.send("a001 STARTTLS\r\n")
        while True:
            line = plain.line()
            if line.startswith("a001 "):
                break
        _expect(line.startswith("a001 OK"), "IMAP STARTTLS reply", line)
    elif protocol == "pop3":
        line = plain.line()
        _expect(line.startswith("+OK"), "POP3 greeting", line)
        plain.send("STLS\r\n")
        line = plain.line()
        _expect(line.startswith("+OK"), "POP3 STLS reply", line)
    elif protocol == "sieve":
        capabilities = []
        while True:
            line = plain.line()
            if line.split(" ", 1)[0].upper() in ("OK", "NO", "BYE"):
                break
            capabilities.append(line.upper())
        _expect(line.upper().startswith("OK") and '"STARTTLS"' in capabilities,
                "ManageSieve greeting", capabilities + [line])
        plain.send("STARTTLS\r\n")
        line = plain.line()
        _expect(line.upper().startswith("OK"), "ManageSieve STARTTLS reply", line)
    elif protocol == "ftp":
        _reply(plain, "220", "FTP greeting")
        plain.send("AUTH TLS\r\n")
        line = plain.line()
        _expect(line.startswith("234"), "FTP AUTH TLS reply", line)
    elif protocol == "ldap":
        plain.send(ldap_starttls_request(1))
        tag, content = _ber_read(plain)
        _expect(tag == 0x30, "LDAP response tag", tag)
        items = _ber_split(content)
        _expect(len(items) >= 2 and items[1][0] == 0x78, "LDAP ExtendedResponse", items)
        fields = _ber_split(items[1][1])
        _expect(fields and fields[0] == (0x0A, b"\x00"), "LDAP StartTLS resultCode", fields)
    elif protocol == "xmpp":
        plain.send("<?xml version='1.0'?>"
                   f"<stream:stream to='{server_name}' xmlns='jabber:client' "
                   "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
        features = plain.until(b"</stream:features>", b"</stream:stream>")
        _expect("<starttls" in features and XMPP_TLS_NS in features, "XMPP stream features", features)
        plain.send(f"<starttls xmlns='{XMPP_TLS_NS}'/>")
        reply = plain.until(b"/>", b"</proceed>", b"</failure>")
        _expect("<proceed" in reply, "XMPP starttls reply", reply)
    else:
        raise ValueError(f"unknown STARTTLS protocol {protocol!r} (known: {STARTTLS_PROTOCOLS})")
    plain.check_drained()


def _set_io_timeouts(sock, seconds=IO_TIMEOUT):
    """Kernel-level timeouts: pyOpenSSL needs a blocking socket, but nothing may hang."""
    sock.settimeout(None)
    timeval = struct.pack("ll", int(seconds), int((seconds % 1) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def set_sigalgs(context, sigalgs):
    """SSL_CTX_set1_sigalgs_list on a pyOpenSSL Context (pyOpenSSL has no API for it)."""
    if _lib.SSL_CTX_set1_sigalgs_list(context._context, sigalgs.encode()) != 1:
        raise ValueError(f"OpenSSL rejected the signature algorithm list {sigalgs!r}")


def _client_context(key_type, tls_version=None):
    if key_type not in SIGALGS:
        raise ValueError(f"key_type must be one of {KEY_TYPES}, not {key_type!r}")
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_verify(SSL.VERIFY_NONE)  # the test compares the chain itself
    if tls_version is None:
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
    else:
        context.set_min_proto_version(TLS_VERSIONS[tls_version])
        context.set_max_proto_version(TLS_VERSIONS[tls_version])
    # The only way to force the server's key type in TLS 1.3 (and it works in TLS 1.2).
    set_sigalgs(context, SIGALGS[key_type])
    return context


@dataclasses.dataclass
class Probe:
    chain: list            # DER bytes, leaf first, as sent by the server
    version: str           # "TLSv1.2" / "TLSv1.3"
    ocsp_staple: bytes     # b"" when ocsp=False or nothing was stapled
    http_status: int = None
    http_headers: dict = None  # lower-case name -> value (last one wins)

    @property
    def leaf(self):
        return x509.load_der_x509_certificate(self.chain[0])


def tls_probe(host, port, server_name, key_type, starttls=None, tls_version=None,
              ocsp=False, http_path=None, timeout=IO_TIMEOUT):
    """Connect, run the STARTTLS preamble, handshake offering only key_type's signature
    algorithms; optionally request an OCSP staple and send `GET http_path`."""
    context = _client_context(key_type, tls_version)
    staple = []
    if ocsp:
        def on_staple(connection, data, _):
            staple.append(bytes(data))
            return True
        context.set_ocsp_client_callback(on_staple)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        if starttls:
            _client_preamble(_Plain(sock), starttls, server_name)
        _set_io_timeouts(sock, timeout)
        connection = SSL.Connection(context, sock)
        if server_name:
            connection.set_tlsext_host_name(server_name.encode("idna"))
        if ocsp:
            connection.request_ocsp()
        connection.set_connect_state()
        try:
            connection.do_handshake()
        except SSL.Error as error:
            raise TLSProbeError(f"TLS handshake with {host}:{port} ({key_type}) failed: {error!r}") from error
        chain = [cert.public_bytes(serialization.Encoding.DER)
                 for cert in connection.get_peer_cert_chain(as_cryptography=True) or []]
        probe = Probe(chain=chain, version=connection.get_protocol_version_name(),
                      ocsp_staple=staple[0] if staple else b"")
        if http_path is not None:
            connection.sendall(f"GET {http_path} HTTP/1.1\r\nHost: {server_name or host}\r\n"
                               f"Connection: close\r\n\r\n".encode())
            response = b""
            while True:
                try:
                    chunk = connection.recv(65536)
                except (SSL.ZeroReturnError, SSL.SysCallError):
                    break
                if not chunk:
                    break
                response += chunk
            head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            probe.http_status = int(head[0].split()[1])
            probe.http_headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                probe.http_headers[name.strip().lower()] = value.strip()
        with contextlib.suppress(SSL.Error):
            connection.shutdown()
        return probe


def fetch_chain(host, port, server_name, key_type, starttls=None, tls_version=None):
    """DER bytes of the certificates the server sends to a client offering only key_type."""
    return tls_probe(host, port, server_name, key_type, starttls=starttls,
                     tls_version=tls_version).chain


# -- server side: a plain TLS server in Python (per-certificate staples) -------------------------

class PyTLSServer:
    """A threaded loopback HTTPS server with pyOpenSSL, for what no Debian server does:
    a different OCSP staple (read from a file) per certificate.

    Every certificate of `certs` is loaded into one SSL_CTX (OpenSSL keeps one per key
    type and picks by the client's signature algorithms); the OCSP status callback staples
    the file given for whichever certificate OpenSSL selected.  Each connection gets one
    HTTP answer: 200 "ok" plus `headers`.
    """

    def __init__(self, certs, port=None, stapling_files=None, headers=None):
        if not certs:
            raise ValueError("at least one (cert_path, key_path) is needed")
        self.certs = [(Path(cert), Path(key)) for cert, key in certs]
        self.headers = dict(headers or {})
        self.errors = []  # exceptions from connection handlers, for debugging
        self._staples = {}
        for (cert, _), staple in zip(self.certs, _stapling_list(stapling_files, self.certs)):
            if staple is not None:
                self._staples[read_pem_chain(cert)[0]] = Path(staple).read_bytes()
        self.context = SSL.Context(SSL.TLS_SERVER_METHOD)
        self.context.set_min_proto_version(SSL.TLS1_2_VERSION)
        for cert, key in self.certs:
            # chain file: the leaf goes to its key type's slot, the rest is that slot's chain
            self.context.use_certificate_chain_file(str(cert))
            self.context.use_privatekey_file(str(key))
        self.context.set_ocsp_server_callback(self._ocsp)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port or 0))
        self._listener.listen(32)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        self._connections = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, name=f"tls-http-{self.port}",
                                        daemon=True)
        self._thread.start()

    def _ocsp(self, connection, _data):
        cert = connection.get_certificate(as_cryptography=True)
        if cert is None:
            return b""
        return self._staples.get(cert.public_bytes(serialization.Encoding.DER), b"")

    def _accept_loop(self):
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            with self._lock:
                self._connections.add(sock)
            threading.Thread(target=self._handle, args=(sock,), daemon=True).start()

    def _handle(self, sock):
        try:
            _set_io_timeouts(sock)
            connection = SSL.Connection(self.context, sock)
            connection.set_accept_state()
            connection.do_handshake()
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = connection.recv(65536)
                if not chunk:
                    break
                request += chunk
            headers = "".join(f"{name}: {value}\r\n" for name, value in self.headers.items())
            connection.sendall(("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
                                f"{headers}Connection: close\r\n\r\nok\n").encode())
            connection.shutdown()
        except (SSL.ZeroReturnError, SSL.SysCallError, ConnectionError):
            pass
        except Exception as error:  # kept for debugging; a client sees a closed socket
            if not self._stopping.is_set():
                self.errors.append(error)
        finally:
            with self._lock:
                self._connections.discard(sock)
            with contextlib.suppress(OSError):
                sock.close()

    def stop(self):
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._thread.join(5)
        with self._lock:
            connections = list(self._connections)
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


# -- server side: the Debian servers for the other STARTTLS protocols ----------------------------
#
# Each runs in the foreground (a lab.Server, stopped by PID) on 127.0.0.1:port with its
# configuration, run and state directories in a directory of its own under the lab's root,
# reading the certificate files where the test has them (as root, like nginx's master).

def _key_type_slots(certs, protocol, most=2):
    """certs as {key_type: (cert, key)}: these servers hold one certificate per key type
    (slapd only one in all)."""
    slots = {}
    for cert, key in certs:
        key_type = key_type_of(cert)
        if key_type in slots:
            raise ValueError(f"{protocol}: two {key_type} certificates; {DAEMONS[protocol]} holds one per key type")
        slots[key_type] = (str(cert), str(key))
    if not slots:
        raise ValueError(f"{protocol}: no certificate given")
    if len(slots) > most:
        raise ValueError(f"{protocol}: {DAEMONS[protocol]} serves one certificate, got {len(slots)}: "
                         "start one server per key type")
    return slots


def _dovecot(directory, port, certs, names):
    """dovecot with only ManageSieve (dovecot-managesieved): ssl_cert and ssl_alt_cert hold
    an RSA and an ECDSA certificate side by side.  dovecot insists on a passdb: an empty
    passwd-file, so that no login can succeed (the probe stops at TLS anyway)."""
    slots = list(_key_type_slots(certs, "sieve").values())
    (directory / "state").mkdir()
    lines = [f"base_dir = {directory}/run",
             f"state_dir = {directory}/state",
             f"instance_name = acmebot-lab-{directory.name}",
             "log_path = /dev/stderr",
             "protocols = sieve",
             "listen = 127.0.0.1",
             "ssl = required",
             "ssl_min_protocol = TLSv1.2",
             f"ssl_cert = <{slots[0][0]}",
             f"ssl_key = <{slots[0][1]}"]
    if len(slots) > 1:
        lines += [f"ssl_alt_cert = <{slots[1][0]}", f"ssl_alt_key = <{slots[1][1]}"]
    lines += ["passdb {", "  driver = passwd-file", "  args = /dev/null", "}",
              "userdb {", "  driver = static", "  args = uid=nobody gid=nogroup home=/nonexistent", "}",
              "service managesieve-login {", "  inet_listener sieve {", "    address = 127.0.0.1",
              f"    port = {port}", "  }", "}"]
    conf = directory / "dovecot.conf"
    conf.write_text("\n".join(lines) + "\n")
    return ["dovecot", "-F", "-c", conf]


def _vsftpd(directory, port, certs, names):
    """vsftpd: its rsa_cert_file and dsa_cert_file are two certificate slots that OpenSSL
    fills by key type, so one RSA and one ECDSA certificate are served side by side.
    vsftpd refuses to start without a login method: local users are enabled, and none
    may log in."""
    slots = list(_key_type_slots(certs, "ftp").values())
    empty = directory / "empty"   # its secure_chroot_dir: root's, not writable by others
    empty.mkdir(mode=0o755)
    lines = ["listen=YES", "listen_ipv6=NO", "listen_address=127.0.0.1", f"listen_port={port}",
             "background=NO", "anonymous_enable=NO", "local_enable=YES", "write_enable=NO",
             # ... and no user is on the (empty) list of those allowed to try
             "userlist_enable=YES", "userlist_deny=NO", "userlist_file=/dev/null",
             "pasv_enable=NO", "xferlog_enable=NO", "syslog_enable=NO",
             f"vsftpd_log_file={directory}/vsftpd.log", f"secure_chroot_dir={empty}",
             "ssl_enable=YES", "ssl_sslv2=NO", "ssl_sslv3=NO", "ssl_tlsv1=NO",
             "ssl_ciphers=HIGH",  # the default list has no ECDSA suite for TLS 1.2
             f"rsa_cert_file={slots[0][0]}", f"rsa_private_key_file={slots[0][1]}"]
    if len(slots) > 1:
        lines += [f"dsa_cert_file={slots[1][0]}", f"dsa_private_key_file={slots[1][1]}"]
    conf = directory / "vsftpd.conf"
    conf.write_text("\n".join(lines) + "\n")
    return ["vsftpd", conf]


def _slapd(directory, port, certs, names):
    """slapd (OpenLDAP 2.5) with StartTLS and no database: it loads ONE certificate
    (TLSCertificateFile), so a test serving both key types over LDAP starts one slapd per
    key type.  slapd.conf form (-f), not cn=config; -d keeps it in the foreground."""
    (cert, key), = _key_type_slots(certs, "ldap", most=1).values()
    conf = directory / "slapd.conf"
    conf.write_text(f"pidfile {directory}/slapd.pid\n"
                    f"argsfile {directory}/slapd.args\n"
                    f"TLSCertificateFile {cert}\n"
                    f"TLSCertificateKeyFile {key}\n"
                    "TLSProtocolMin 3.3\n")   # TLS 1.2
    return ["slapd", "-d", "0", "-h", f"ldap://127.0.0.1:{port}/", "-f", conf]


def _prosody(directory, port, certs, names):
    """prosody (XMPP client-to-server port only) with a VirtualHost per name; LuaSec's
    `certificates` list serves an RSA and an ECDSA certificate side by side.  It stays
    root (run_as_root) so that it reads the test's certificate files, as the others do."""
    slots = _key_type_slots(certs, "xmpp").values()
    (directory / "data").mkdir()
    (directory / "certs").mkdir()   # where prosody looks for certificates of its own: none
    certificates = "".join(f'        {{ certificate = "{cert}", key = "{key}" }},\n' for cert, key in slots)
    hosts = "".join(f'VirtualHost "{name}"\n    ssl = {{ certificates = {{\n{certificates}    }} }}\n'
                    for name in names)
    conf = directory / "prosody.cfg.lua"
    conf.write_text(f'run_as_root = true\n'
                    f'pidfile = "{directory}/prosody.pid"\n'
                    f'data_path = "{directory}/data"\n'
                    f'certificates = "{directory}/certs"\n'
                    'log = { { levels = { min = "info" }, to = "console" } }\n'
                    'daemonize = false\n'
                    'interfaces = { "127.0.0.1" }\n'
                    f'c2s_ports = {{ {port} }}\n'
                    'c2s_direct_tls_ports = { }\n'
                    'legacy_ssl_ports = { }\n'
                    'modules_enabled = { "tls", "saslauth" }\n'
                    'modules_disabled = { "s2s", "offline" }\n'
                    'c2s_require_encryption = true\n'
                    + hosts)
    return ["prosody", "-F", "--config", conf]


# protocol -> the Debian server that speaks it (its program) and the function writing its config
DAEMONS = {"sieve": "dovecot", "ftp": "vsftpd", "ldap": "slapd", "xmpp": "prosody"}
_DAEMON_CONFIGS = {"sieve": _dovecot, "ftp": _vsftpd, "ldap": _slapd, "xmpp": _prosody}


def _cert_names(certs):
    """The DNS names of the certificates, in order, each once."""
    names = []
    for cert, _ in certs:
        leaf = x509.load_pem_x509_certificates(Path(cert).read_bytes())[0]
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            continue
        names += [name for name in san.get_values_for_type(x509.DNSName) if name not in names]
    return names


class _AuthHandler(http.server.BaseHTTPRequestHandler):
    """nginx mail auth_http endpoint that refuses every login."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Auth-Status", "Invalid login")
        self.send_header("Auth-Wait", "3")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


# -- the fixture's helper object --------------------------------------------------------------

_counter = itertools.count(1)


class TLSServers:
    """See the module docstring.  One per test (fixture `tls_servers`)."""

    MAIL_CONF = "tls-servers-mail.conf"

    def __init__(self, lab):
        self.lab = lab
        self._prefix = f"tls-servers-{next(_counter)}"
        self._http_snippets = {}   # port -> [paths]
        self._mail_servers = {}    # port -> server {} text
        self._py_servers = {}      # port -> PyTLSServer
        self._daemons = {}         # port -> lab.Server (dovecot, vsftpd, slapd, prosody)
        self._auth = None
        self._auth_thread = None

    # -- nginx https
    def https(self, server_names, certs, port=None, stapling_files=None, include=None, extra=None):
        server_names = _as_list(server_names)
        if not server_names or not certs:
            raise ValueError("server_names and certs must not be empty")
        staples = _stapling_list(stapling_files, certs)
        staple_set = {str(staple) for staple in staples}
        if len(staple_set) > 1:
            raise ValueError("nginx staples one ssl_stapling_file for every certificate of a server "
                             f"block; got {staples}: use tls_servers.tls() for per-certificate staples")
        port = port or free_port()
        lines = [f"listen 127.0.0.1:{port} ssl;",
                 f"server_name {' '.join(server_names)};",
                 "ssl_protocols TLSv1.2 TLSv1.3;"]
        for cert, key in certs:
            lines += [f"ssl_certificate {cert};", f"ssl_certificate_key {key};"]
        if staples and staples[0] is not None:
            lines += ["ssl_stapling on;", f"ssl_stapling_file {staples[0]};"]
        lines += [f"include {path};" for path in _as_list(include)]
        lines += _as_list(extra)
        lines += ["location / {", "    default_type text/plain;", '    return 200 "ok\\n";', "}"]
        text = "server {\n" + "".join(f"    {line}\n" for line in lines) + "}\n"
        path = Path(self.lab.nginx_conf_dir) / f"{self._prefix}-{next(_counter)}.conf"
        path.write_text(text)
        try:
            self._reload()
        except Exception:
            path.unlink(missing_ok=True)  # a rejected snippet would break every later reload
            raise
        self._http_snippets.setdefault(port, []).append(path)
        self._wait_serving(port, server_names[0], certs, None)
        return port

    # -- nginx mail
    def _start_auth(self):
        if self._auth is None:
            self._auth = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AuthHandler)
            self._auth.daemon_threads = True
            self._auth_thread = threading.Thread(target=self._auth.serve_forever,
                                                 kwargs={"poll_interval": 0.2}, daemon=True)
            self._auth_thread.start()
        return self._auth.server_address[1]

    def _write_mail_conf(self):
        path = Path(self.lab.nginx_main_conf_dir) / self.MAIL_CONF
        if not self._mail_servers:
            path.unlink(missing_ok=True)
            return
        path.write_text(
            "mail {\n"
            f"    auth_http 127.0.0.1:{self._start_auth()}/auth;\n"
            "    ssl_protocols TLSv1.2 TLSv1.3;\n"
            + "".join(self._mail_servers.values())
            + "}\n")

    def mail(self, protocol, server_names, certs, port=None):
        if protocol not in MAIL_PROTOCOLS:
            raise ValueError(f"nginx mail protocol must be one of {MAIL_PROTOCOLS}, not {protocol!r}")
        server_names = _as_list(server_names)
        if not server_names or not certs:
            raise ValueError("server_names and certs must not be empty")
        if (Path(self.lab.nginx_main_conf_dir) / self.MAIL_CONF).exists() and not self._mail_servers:
            raise LabError(f"{self.MAIL_CONF} left over by another user: only one mail {{}} block is allowed")
        port = port or free_port()
        if port in self._mail_servers:
            raise ValueError(f"port {port} already has a mail server")
        lines = [f"listen 127.0.0.1:{port};", f"protocol {protocol};",
                 f"server_name {server_names[0]};", "starttls on;"]
        for cert, key in certs:
            lines += [f"ssl_certificate {cert};", f"ssl_certificate_key {key};"]
        self._mail_servers[port] = ("    server {\n" + "".join(f"        {line}\n" for line in lines)
                                    + "    }\n")
        self._write_mail_conf()
        try:
            self._reload()
        except Exception:
            del self._mail_servers[port]
            self._write_mail_conf()
            raise
        self._wait_serving(port, server_names[0], certs, protocol)
        return port

    # -- the Debian STARTTLS servers
    def starttls(self, protocol, certs, port=None, server_names=None):
        if protocol not in DAEMON_PROTOCOLS:
            raise ValueError(f"starttls() protocol must be one of {DAEMON_PROTOCOLS}, not {protocol!r}"
                             f" (smtp/imap/pop3: use mail())")
        names = _as_list(server_names) or _cert_names(certs)
        if not names:
            raise ValueError("no server_names given and the certificates name no DNS names")
        port = port or free_port()
        directory = Path(self.lab.root) / f"{self._prefix}-{protocol}-{next(_counter)}"
        directory.mkdir(mode=0o755)
        argv = _DAEMON_CONFIGS[protocol](directory, port, certs, names)
        server = Server(DAEMONS[protocol], argv, directory / "server.log", cwd=directory)
        self._daemons[port] = server
        self._wait_serving(port, names[0], certs, protocol, server)
        return port

    def daemon(self, port):
        """The lab.Server of the STARTTLS server on port (.running(), .log_path)."""
        return self._daemons[port]

    # -- Python server
    def tls(self, certs, port=None, stapling_files=None, headers=None):
        server = PyTLSServer(certs, port, stapling_files, headers)
        self._py_servers[server.port] = server
        self._wait_serving(server.port, "tls.example.test", certs, None)
        return server.port

    def server(self, port):
        """The PyTLSServer on port (its .errors lists handler exceptions)."""
        return self._py_servers[port]

    # -- common
    def _nginx_workers(self):
        """PIDs of the nginx master's children (its worker processes)."""
        master = str(self.lab.nginx.pid)
        children = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[1] == master:  # fields: state, ppid, ...
                children.add(int(stat.parent.name))
        return children

    def _reload(self):
        """lab.nginx_reload(), then wait until the old workers are gone: lab.nginx_reload()
        returns once new workers have started, while an old worker may still accept on a
        listening socket that both configurations share (a reused port) for a moment."""
        old = self._nginx_workers()
        self.lab.nginx_reload()
        wait_for("old nginx workers to exit", lambda: not (old & self._nginx_workers()), timeout=30)

    def _wait_serving(self, port, server_name, certs, starttls, server=None):
        """Until the port serves each certificate to a client offering its key type
        (failing at once, with its log, if `server` exits)."""
        expected = {}
        for cert, _ in certs:
            expected[key_type_of(cert)] = read_pem_chain(cert)[0]

        def serving():
            for key_type, leaf in expected.items():
                chain = fetch_chain("127.0.0.1", port, server_name, key_type, starttls=starttls)
                if not chain or chain[0] != leaf:
                    return False
            return True

        if server is not None:
            server.wait_ready(serving, timeout=30)
        else:
            wait_for(f"TLS server on 127.0.0.1:{port}", serving, timeout=30)

    def stop(self, port):
        reload = False
        for path in self._http_snippets.pop(port, []):
            path.unlink(missing_ok=True)
            reload = True
        if self._mail_servers.pop(port, None) is not None:
            self._write_mail_conf()
            reload = True
        server = self._py_servers.pop(port, None) or self._daemons.pop(port, None)
        if server is not None:
            server.stop()
        if reload:
            self._reload()

    def close(self):
        reload = bool(self._http_snippets or self._mail_servers)
        for paths in self._http_snippets.values():
            for path in paths:
                path.unlink(missing_ok=True)
        self._http_snippets.clear()
        if self._mail_servers:
            self._mail_servers.clear()
            self._write_mail_conf()
        for server in [*self._py_servers.values(), *self._daemons.values()]:
            server.stop()
        self._py_servers.clear()
        self._daemons.clear()
        try:
            if reload:
                self._reload()
        finally:
            if self._auth is not None:
                self._auth.shutdown()
                self._auth.server_close()
                self._auth = None


@pytest.fixture
def tls_servers(lab):
    servers = TLSServers(lab)
    try:
        yield servers
    finally:
        servers.close()


__all__ = ["tls_servers", "TLSServers", "PyTLSServer", "fetch_chain", "tls_probe", "Probe",
           "set_sigalgs", "SIGALGS", "STARTTLS_PROTOCOLS", "MAIL_PROTOCOLS", "DAEMON_PROTOCOLS", "DAEMONS",
           "read_pem_chain", "key_type_of", "ldap_starttls_request", "TLSProbeError"]
