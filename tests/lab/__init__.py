"""The integration-test lab: real BIND 9, pebble and nginx on loopback ports.

One `Lab` is started per pytest session (fixture `lab` in conftest.py), inside the
loopback-only network namespace that conftest.py sets up.  Everything lives under one
temporary directory; every process is stopped by its PID when the session ends.

    lab.dns_port, lab.http_port          ports of BIND and nginx (127.0.0.1)
    lab.directory_url                    the default pebble's ACME directory
    lab.pebble_ca_bundle                 CA that signed every pebble's TLS certificate
    lab.keys_dir                         update keys handed to acmebot
    lab.http_challenge_dir               nginx serves it at /.well-known/acme-challenge/
    lab.nginx_conf_dir                   *.conf in it are included in nginx's http {}
    lab.add_hosts(zone, *hosts)          `host A 127.0.0.1` records, via TSIG update
    lab.query(fqdn, rdtype) / lab.txt(fqdn)
    lab.start_pebble(name, extra_config, extra_env)   a second CA (EAB, short validity...)

acmebot_module() is the script imported in process (once); the state it keeps in
directories.resource is read and changed through its own types, never as JSON by hand:
edit_key_state(config_path, key_name, change) (e.g. forget_issuers).
"""

import base64
import contextlib
import copy
import ctypes
import datetime
import grp
import importlib.machinery
import importlib.util
import ipaddress
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.update
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

LAB_DIR = Path(__file__).resolve().parent
TESTS_DIR = LAB_DIR.parent
REPO = TESTS_DIR.parent
ACMEBOT = REPO / "acmebot"
RELOAD_ZONE = LAB_DIR / "reload_zone.py"

REQUIRED_BINARIES = ("pebble", "named", "nginx", "tsig-keygen", "openssl", "dig",
                     # the STARTTLS servers of tls_servers.py
                     "dovecot", "vsftpd", "slapd", "prosody")

# Zones served by BIND: zone -> name of the TSIG key allowed to update it.
# example.test and example.net are updated by acmebot itself; local.test is the
# "local DNS" zone that acmebot only changes through reload_zone_command.
ZONES = {
    "example.test": "update.example.test",
    "example.net": "update.example.net",
    "local.test": "reload.local.test",
}
LOCAL_ZONE = "local.test"
NET_KEY_BASENAME = "Kupdate.example.net.+163+12345"

START_TIMEOUT = 60.0  # seconds; the machine may be slow and shared


class LabError(RuntimeError):
    """A lab server could not be started or did not behave."""


# -- small helpers ---------------------------------------------------------------------

def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (also checked for UDP)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise LabError("no free port found on 127.0.0.1")


def log_tail(path, lines=40):
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as error:
        return f"(no log: {error})"
    return "\n".join(text.splitlines()[-lines:])


def wait_for(what, check, timeout=START_TIMEOUT, process=None, log=None):
    """Poll `check()` until it returns a true value; fail early if `process` exits."""
    deadline = time.monotonic() + timeout
    last_error = None
    delay = 0.02
    while True:
        if process is not None and process.poll() is not None:
            raise LabError(f"{what}: process exited with status {process.returncode}\n"
                           f"--- log tail ({log}) ---\n{log_tail(log)}")
        try:
            result = check()
            if result:
                return result
        except Exception as error:  # polled until the deadline, then reported
            last_error = error
        if time.monotonic() > deadline:
            tail = f"\n--- log tail ({log}) ---\n{log_tail(log)}" if log else ""
            raise LabError(f"{what}: not ready after {timeout:.0f}s (last error: {last_error!r}){tail}")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def _die_with_parent():
    """preexec_fn: the server gets SIGTERM if pytest dies without cleaning up."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def parse_key_file(path):
    """Parse a key file in tsig-keygen form (`key "name" { algorithm a; secret "s"; };`).

    Returns {name: dns.tsig.Key}.  Comments (#, //) are ignored; several keys are allowed.
    (dns.tsigkeyring.from_file cannot be used: it fails on comments, keeps one key.)
    """
    return parse_key_text(Path(path).read_text(), str(path))


def parse_key_text(text, where="key text"):
    """parse_key_file for text in memory."""
    # comments outside quoted strings only: a base64 secret may contain "//"
    text = re.sub(r'("(?:[^"\\]|\\.)*")|/\*.*?\*/|//[^\n]*|#[^\n]*',
                  lambda m: m.group(1) or "", text, flags=re.S)
    keys = {}
    for match in re.finditer(r'key\s+"?([^"\s{]+)"?\s*\{(.*?)\}\s*;', text, re.S):
        name, body = match.group(1), match.group(2)
        algorithm = re.search(r"algorithm\s+\"?([\w.-]+)\"?\s*;", body)
        secret = re.search(r'secret\s+"([^"]+)"\s*;', body)
        if not (algorithm and secret):
            raise ValueError(f"{where}: key {name!r} lacks algorithm or secret")
        keys[name] = dns.tsig.Key(name, secret.group(1), algorithm.group(1))
    if not keys:
        raise ValueError(f"{where}: no key statement found")
    return keys


def tsig_key_text(name, secret, algorithm="hmac-sha256"):
    return f'key "{name}" {{\n\talgorithm {algorithm};\n\tsecret "{secret}";\n}};\n'


def named_options(directory, port, recursive=False):
    """The options of a foreground named on 127.0.0.1:port with its state in
    directory: authoritative only, or (recursive) a resolver that caches nothing."""
    if recursive:
        mode = ("    recursion yes;\n    allow-recursion { 127.0.0.1; };\n"
                "    max-cache-ttl 0;\n    max-ncache-ttl 0;\n")
    else:
        mode = "    recursion no;\n    notify no;\n    allow-query { any; };\n"
    return (f"options {{\n"
            f'    directory "{directory}";\n'
            f'    pid-file "{directory}/named.pid";\n'
            f'    session-keyfile "{directory}/session.key";\n'
            f'    managed-keys-directory "{directory}";\n'
            f"    listen-on port {port} {{ 127.0.0.1; }};\n"
            f"    listen-on-v6 {{ none; }};\n"
            f"    dnssec-validation no;\n"
            f"{mode}"
            f"}};\n"
            f"controls {{ }};\n")  # no rndc channel on port 953


def acmebot_module():
    """The acmebot script (a file without .py) imported as the module ``acmebot``,
    once per process: every test module and lab.inprocess use this one."""
    module = sys.modules.get("acmebot")
    if module is None or getattr(module, "__file__", None) != str(ACMEBOT):
        loader = importlib.machinery.SourceFileLoader("acmebot", str(ACMEBOT))
        module = importlib.util.module_from_spec(importlib.util.spec_from_loader("acmebot", loader))
        sys.modules["acmebot"] = module      # dataclasses look the module up
        loader.exec_module(module)
    return module


def load_acmebot_config(config_path):
    """The Config acmebot parses from config_path (for the paths of its state files)."""
    return acmebot_module().load_config(str(config_path))


def edit_key_state(config_path, key_name, change):
    """change(state) on the KeyState of private key key_name, then saved as acmebot saves it."""
    ab = acmebot_module()
    config = load_acmebot_config(config_path)
    state = ab.KeyState.load(config, key_name)
    change(state)
    state.save(config)
    return state


def forget_issuers(state):
    """A KeyState change: as written before the CA was recorded (by an older acmebot)."""
    for record in state.issued.values():
        record.directory = None


def deep_merge(base, overrides):
    """A copy of `base` with `overrides` merged in: dicts merge recursively, anything
    else (lists, None included) replaces the base value."""
    merged = copy.deepcopy(base)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000


def isolate_network():
    """Move this process into a new network namespace that has only lo (up); return an
    error text or None.  Used by conftest.py (pytest), the demo, the benchmark and the
    kill campaign, before any thread or server is started."""
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.geteuid(), os.getegid()
    flags = CLONE_NEWNET if uid == 0 else CLONE_NEWNET | CLONE_NEWUSER
    if libc.unshare(flags) != 0:
        errno = ctypes.get_errno()
        return (f"unshare({'CLONE_NEWNET' if uid == 0 else 'CLONE_NEWUSER|CLONE_NEWNET'}) failed: "
                f"{os.strerror(errno)} (the lab tests need root; the unit tests need unprivileged user "
                "namespaces)")
    if uid != 0:
        # not root: a user namespace of our own, in which we are root (mapped to our uid),
        # so that `ip` may bring lo up; only the unit tier runs like this
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    ip = shutil.which("ip")
    if ip is None:
        return "'ip' (iproute2) not found: cannot bring up lo in the test network namespace"
    result = subprocess.run([ip, "link", "set", "lo", "up"], capture_output=True, text=True)
    if result.returncode != 0:
        return f"'ip link set lo up' failed: {result.stderr.strip()}"
    links = subprocess.run([ip, "-o", "link", "show"], capture_output=True, text=True).stdout
    names = [line.split(":")[1].strip() for line in links.splitlines() if line.strip()]
    if names != ["lo"]:
        return f"network namespace has interfaces {names}, expected only lo"
    return None


class Server:
    """One child process with its log file; stopped by PID."""

    def __init__(self, name, argv, log_path, env=None, cwd=None):
        self.name = name
        self.argv = [str(arg) for arg in argv]
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=env, cwd=cwd, preexec_fn=_die_with_parent)
        self.pid = self.process.pid

    def wait_ready(self, check, timeout=START_TIMEOUT):
        return wait_for(f"{self.name} ({' '.join(self.argv)})", check, timeout,
                        process=self.process, log=self.log_path)

    def running(self):
        return self.process.poll() is None

    def stop(self, timeout=10.0):
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.process.wait(timeout)
        self._log.close()


# -- TLS material for pebble -------------------------------------------------------------

def make_tls_material(directory):
    """A throwaway CA and a server certificate for 127.0.0.1/localhost signed by it.

    Returns (ca_pem_path, cert_pem_path, key_pem_path).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acmebot test lab TLS CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "tls-ca.pem"
    cert_path = directory / "tls-cert.pem"
    key_path = directory / "tls-key.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


# -- pebble --------------------------------------------------------------------------------

class Pebble:
    """One running pebble instance (see Lab.start_pebble)."""

    def __init__(self, name, directory, config, env, ca_bundle, dns_server):
        self.name = name
        self.dir = Path(directory)
        self.config = config
        self.env = env
        self.ca_bundle = str(ca_bundle)
        self.port = int(config["pebble"]["listenAddress"].rsplit(":", 1)[1])
        self.management_port = int(config["pebble"]["managementListenAddress"].rsplit(":", 1)[1])
        self.directory_url = f"https://127.0.0.1:{self.port}/dir"
        self.management_url = f"https://127.0.0.1:{self.management_port}"
        self.config_path = self.dir / "pebble-config.json"
        self.config_path.write_text(json.dumps(config, indent=2))
        # -strict works with pebble 2.4.0 for http-01 and dns-01 (checked with the
        # acme library, including wildcards); it makes pebble reject deprecated
        # protocol details instead of tolerating them, which is what tests want.
        self.server = Server(f"pebble {name}",
                             ["pebble", "-config", self.config_path, "-dnsserver", dns_server, "-strict"],
                             self.dir / "pebble.log", env=env, cwd=self.dir)
        self.server.wait_ready(self._ready)

    def _ready(self):
        response = requests.get(self.directory_url, verify=self.ca_bundle, timeout=5)
        return response.status_code == 200 and "newOrder" in response.json()

    @property
    def pid(self):
        return self.server.pid

    def directory(self):
        return requests.get(self.directory_url, verify=self.ca_bundle, timeout=10).json()

    def management_get(self, path):
        # The management API is served with the same lab TLS certificate, so it is
        # verified against the lab CA like the ACME endpoint (no verify=False needed).
        response = requests.get(self.management_url + path, verify=self.ca_bundle, timeout=10)
        response.raise_for_status()
        return response

    def root_pem(self, index=0):
        """PEM text of the root that pebble issues under (management /roots/N)."""
        return self.management_get(f"/roots/{index}").text

    def intermediate_pem(self, index=0):
        return self.management_get(f"/intermediates/{index}").text

    def intermediate_key_pem(self, index=0):
        return self.management_get(f"/intermediate-keys/{index}").text

    def cert_status(self, serial):
        """Dict from /cert-status-by-serial/<hex> (e.g. {"Status": "Revoked", "Reason": 1, ...})."""
        return self.management_get(f"/cert-status-by-serial/{int(serial):x}").json()

    def stop(self):
        self.server.stop()


# -- the lab -------------------------------------------------------------------------------

class Lab:
    """BIND 9 + nginx + pebble on free loopback ports, state under `root`."""

    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # nginx workers (may be another user) traverse it
        self.keys_dir = self.root / "keys"                 # update keys for acmebot
        self.reload_keys_dir = self.root / "reload-keys"   # key for reload_zone.py only
        self.bind_dir = self.root / "bind"
        self.nginx_dir = self.root / "nginx"
        self.nginx_conf_dir = self.root / "nginx.d"        # included in http {}
        self.nginx_main_conf_dir = self.root / "nginx-main.d"  # included at top level (mail {}, stream {})
        self.http_challenge_dir = self.root / "http-challenge"
        self.tls_dir = self.root / "tls"
        self.pebble_root_dir = self.root / "pebble"
        self.dns_port = None
        self.http_port = None
        self.pebble = None          # the default (session) pebble
        self.pebbles = {}
        self.keys = {}              # key name -> dns.tsig.Key
        self.zone_key_files = {}    # zone -> key file path in tsig-keygen form
        self.pebble_ca_bundle = None
        self._servers = []
        self._hosts_lock = threading.Lock()
        self._added_hosts = set()
        self.named = None
        self.nginx = None

    # -- life cycle
    def start(self):
        try:
            self.tls_ca, self.tls_cert, self.tls_key = make_tls_material(self.tls_dir)
            self.pebble_ca_bundle = str(self.tls_ca)
            self._start_named()
            self._start_nginx()
            self.pebble = self.start_pebble("default")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        for server in reversed(self._servers):
            with contextlib.suppress(Exception):
                server.stop()
        self._servers.clear()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- BIND
    @property
    def dns_server(self):
        return f"127.0.0.1:{self.dns_port}"

    def _make_keys(self):
        self.keys_dir.mkdir(mode=0o755, exist_ok=True)
        self.reload_keys_dir.mkdir(mode=0o755, exist_ok=True)
        statements = []
        for zone, key_name in ZONES.items():
            output = subprocess.run(["tsig-keygen", "-a", "hmac-sha256", key_name],
                                    check=True, capture_output=True, text=True).stdout
            key = parse_key_text(output)[key_name]
            self.keys[key_name] = key
            secret = base64.b64encode(key.secret).decode()
            statements.append(output)
            if zone == "example.test":
                path = self.keys_dir / f"{key_name}.key"
                path.write_text(output)
            elif zone == "example.net":
                # The old dnssec-keygen pair, which BIND 9.18 can no longer generate.
                path = self.keys_dir / f"{NET_KEY_BASENAME}.key"
                path.write_text(f"{key_name}. IN KEY 512 3 163 {secret}\n")
                (self.keys_dir / f"{NET_KEY_BASENAME}.private").write_text(
                    "Private-key-format: v1.3\n"
                    "Algorithm: 163 (HMAC_SHA256)\n"
                    f"Key: {secret}\n"
                    "Bits: AAA=\n")
            else:
                path = self.reload_keys_dir / f"{key_name}.key"
                path.write_text(output)
            path.chmod(0o600)
            self.zone_key_files[zone] = path
        return "".join(statements)

    def _start_named(self):
        self.bind_dir.mkdir(mode=0o755)
        key_statements = self._make_keys()
        self.dns_port = free_port()
        zones = []
        for zone, key_name in ZONES.items():
            (self.bind_dir / f"{zone}.zone").write_text(
                f"$TTL 300\n"
                f"@ IN SOA ns1.{zone}. hostmaster.{zone}. 1 3600 600 86400 60\n"
                f"@ IN NS ns1.{zone}.\n"
                f"ns1 IN A 127.0.0.1\n"
                f"@ IN A 127.0.0.1\n"
                f"www IN A 127.0.0.1\n")
            # reload_zone.py lists the zone's _acme-challenge records by AXFR.
            transfer = f"key {key_name};" if zone == LOCAL_ZONE else "none;"
            zones.append(
                f'zone "{zone}" {{\n'
                f"    type primary;\n"
                f'    file "{zone}.zone";\n'
                f"    update-policy {{ grant {key_name} zonesub ANY; }};\n"
                f"    allow-transfer {{ {transfer} }};\n"
                f"}};\n")
        conf = self.bind_dir / "named.conf"
        conf.write_text(
            f"{key_statements}\n" + named_options(self.bind_dir, self.dns_port) + "".join(zones))
        # -g: foreground, log to stderr; running as root, named keeps root (no -u),
        # so the lab directory needs no special ownership.
        self.named = Server("named", ["named", "-g", "-c", conf], self.bind_dir / "named.log",
                            cwd=self.bind_dir)
        self._servers.append(self.named)
        # Short query timeouts: a UDP query sent before named listens is simply lost.
        self.named.wait_ready(lambda: all(self.query(zone, "SOA", timeout=0.5) for zone in ZONES))

    def query(self, fqdn, rdtype, timeout=5.0):
        """Rdata list BIND serves for fqdn/rdtype ([] for NXDOMAIN or NODATA)."""
        name = dns.name.from_text(fqdn)
        rdtype = dns.rdatatype.from_text(rdtype) if isinstance(rdtype, str) else rdtype
        message = dns.message.make_query(name, rdtype)
        response, _ = dns.query.udp_with_fallback(message, "127.0.0.1", timeout=timeout, port=self.dns_port)
        rcode = response.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            return []
        if rcode != dns.rcode.NOERROR:
            raise LabError(f"query {fqdn} {dns.rdatatype.to_text(rdtype)}: {dns.rcode.to_text(rcode)}")
        rrset = response.get_rrset(response.answer, name, dns.rdataclass.IN, rdtype)
        return list(rrset) if rrset else []

    def txt(self, fqdn):
        """Sorted TXT strings served for fqdn (multi-string records are joined)."""
        return sorted(b"".join(rdata.strings).decode() for rdata in self.query(fqdn, "TXT"))

    def update(self, zone, key_name=None):
        """A dns.update.UpdateMessage for zone, signed with its update key."""
        key = self.keys[key_name or ZONES[zone]]
        return dns.update.UpdateMessage(zone, keyring=key)

    def send_update(self, message):
        response = dns.query.tcp(message, "127.0.0.1", port=self.dns_port, timeout=10)
        if response.rcode() != dns.rcode.NOERROR:
            raise LabError(f"update refused: {dns.rcode.to_text(response.rcode())}")
        return response

    def add_hosts(self, zone, *hosts):
        """Add `host.zone A 127.0.0.1` for each host (relative names; '@' = apex)."""
        with self._hosts_lock:
            new = [host for host in hosts if (zone, host) not in self._added_hosts]
            if not new:
                return
            message = self.update(zone)
            for host in new:
                message.replace(host, 300, "A", "127.0.0.1")
            self.send_update(message)
            self._added_hosts.update((zone, host) for host in new)

    def bad_key_file(self, directory):
        """Key file for update.example.test with a wrong secret (BIND rejects it)."""
        path = Path(directory) / "bad-update.example.test.key"
        secret = base64.b64encode(secrets.token_bytes(32)).decode()
        path.write_text(tsig_key_text(ZONES["example.test"], secret))
        path.chmod(0o600)
        return path

    def reload_zone_command(self, challenge_dir):
        """reload_zone_command for acmebot's config (acmebot appends the zone name)."""
        argv = [sys.executable, str(RELOAD_ZONE), "--challenge-dir", str(challenge_dir),
                "--server", "127.0.0.1", "--port", str(self.dns_port),
                "--key-file", str(self.zone_key_files[LOCAL_ZONE])]
        return " ".join(shlex.quote(part) for part in argv)

    # -- nginx
    def _nginx_argv(self, *extra):
        return ["nginx", "-c", str(self.nginx_dir / "nginx.conf"), "-p", str(self.nginx_dir),
                "-e", str(self.nginx_dir / "error.log"), *extra]

    def _start_nginx(self):
        for directory in (self.nginx_dir, self.nginx_conf_dir, self.nginx_main_conf_dir,
                          self.http_challenge_dir):
            directory.mkdir(mode=0o755)
            directory.chmod(0o755)
        self.http_port = free_port()
        user = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(os.getgid()).gr_name
        modules = ""
        mail_module = Path("/usr/lib/nginx/modules/ngx_mail_module.so")
        if mail_module.exists():  # so tests can drop mail {} blocks into nginx-main.d
            modules = f"load_module {mail_module};\n"
        d = self.nginx_dir
        (d / "nginx.conf").write_text(
            f"{modules}"
            # Workers run as the test user (root in CI), as the user nginx would
            # otherwise pick (nobody) could not read pytest's 0700 tmp_path dirs.
            f"user {user} {group};\n"
            f"worker_processes 1;\n"
            f"pid {d}/nginx.pid;\n"
            f"lock_file {d}/nginx.lock;\n"
            f"error_log {d}/error.log notice;\n"
            f"events {{ worker_connections 256; }}\n"
            f"http {{\n"
            f"    access_log {d}/access.log;\n"
            f"    client_body_temp_path {d}/client_body;\n"
            f"    proxy_temp_path {d}/proxy;\n"
            f"    fastcgi_temp_path {d}/fastcgi;\n"
            f"    uwsgi_temp_path {d}/uwsgi;\n"
            f"    scgi_temp_path {d}/scgi;\n"
            f"    default_type application/octet-stream;\n"
            f"    server {{\n"
            f"        listen 127.0.0.1:{self.http_port} default_server;\n"
            f"        server_name _;\n"
            f"        location /.well-known/acme-challenge/ {{\n"
            f"            default_type text/plain;\n"
            f"            alias {self.http_challenge_dir}/;\n"
            f"        }}\n"
            f"    }}\n"
            f"    include {self.nginx_conf_dir}/*.conf;\n"
            f"}}\n"
            f"include {self.nginx_main_conf_dir}/*.conf;\n")
        self.nginx = Server("nginx", self._nginx_argv("-g", "daemon off;"), d / "nginx.stderr.log")
        self._servers.append(self.nginx)
        url = f"http://127.0.0.1:{self.http_port}/.well-known/acme-challenge/lab-ready"
        self.nginx.wait_ready(lambda: requests.get(url, timeout=5).status_code == 404)

    def nginx_reload(self, timeout=START_TIMEOUT):
        """`nginx -t`, then SIGHUP; returns when new workers have started."""
        test = subprocess.run(self._nginx_argv("-t"), capture_output=True, text=True)
        if test.returncode != 0:
            raise LabError(f"nginx -t failed:\n{test.stdout}{test.stderr}")
        error_log = self.nginx_dir / "error.log"
        offset = error_log.stat().st_size
        os.kill(self.nginx.pid, signal.SIGHUP)

        def reloaded():
            with open(error_log, "rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace")
            if "[emerg]" in text or "[alert]" in text:
                raise LabError(f"nginx reload failed:\n{text}")
            return "reconfiguring" in text and "start worker process" in text

        wait_for("nginx reload", reloaded, timeout, process=self.nginx.process, log=error_log)

    # -- pebble
    def start_resolver(self):
        """A recursive BIND on loopback forwarding the lab's zones to the
        authoritative one: unlike the authoritative server it follows CNAMEs
        into other zones, as the validation resolver of a real CA does.
        Returns its "127.0.0.1:port" (started once)."""
        if getattr(self, "resolver", None):
            return self.resolver
        directory = self.root / "resolver"
        directory.mkdir(mode=0o755)
        port = free_port()
        forwards = "".join(
            f'zone "{zone}" {{ type forward; forward only; forwarders {{ 127.0.0.1 port {self.dns_port}; }}; }};\n'
            for zone in ZONES)
        conf = directory / "named.conf"
        conf.write_text(named_options(directory, port, recursive=True) + forwards)
        server = Server("resolver", ["named", "-g", "-c", conf], directory / "named.log", cwd=directory)
        self._servers.append(server)

        def ready():
            request = dns.message.make_query("example.test", "SOA")
            try:
                return bool(dns.query.udp(request, "127.0.0.1", port=port, timeout=0.5).answer)
            except Exception:  # noqa: BLE001 - not up yet
                return False
        server.wait_ready(ready)
        self.resolver = f"127.0.0.1:{port}"
        return self.resolver

    def start_pebble(self, name, extra_config=None, extra_env=None, dns_server=None):
        """Start a pebble instance named `name` on fresh ports.

        extra_config is merged into the {"pebble": {...}} object (e.g.
        {"externalAccountBindingRequired": True, "externalAccountMACKeys": {...}} or
        {"certificateValidityPeriod": 600}); extra_env is added to the environment
        (e.g. {"PEBBLE_WFE_NONCEREJECT": "50"}).  Stopped at session end.
        """
        if name in self.pebbles:
            raise LabError(f"pebble {name!r} already started")
        directory = self.pebble_root_dir / name
        directory.mkdir(parents=True, mode=0o755)
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{free_port()}",
            "managementListenAddress": f"127.0.0.1:{free_port()}",
            "certificate": str(self.tls_cert),
            "privateKey": str(self.tls_key),
            "httpPort": self.http_port,
            "tlsPort": free_port(),
            "externalAccountBindingRequired": False,
            "ocspResponderURL": "",
        }}
        config["pebble"] = deep_merge(config["pebble"], extra_config or {})
        env = dict(os.environ)
        env.update({"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0",
                    "PEBBLE_AUTHZREUSE": "100"})
        env.update({key: str(value) for key, value in (extra_env or {}).items()})
        pebble = Pebble(name, directory, config, env, self.pebble_ca_bundle, dns_server or self.dns_server)
        self._servers.append(pebble)
        self.pebbles[name] = pebble
        return pebble

    @property
    def directory_url(self):
        return self.pebble.directory_url

    def pebble_root_pem(self):
        return self.pebble.root_pem()

    def cert_status(self, serial):
        return self.pebble.cert_status(serial)


# -- acmebot helpers (re-exported by conftest.py) ---------------------------------------------

def base_config(tmp_path, lab):
    tmp = Path(tmp_path)
    return {
        "account": {"email": "admin@example.test"},
        "settings": {
            "acme_directory_url": lab.directory_url,
            "acme_ca_bundle": lab.pebble_ca_bundle,
            "dns_resolvers": [lab.dns_server],
            "dns_port": lab.dns_port,
            "dns_lookup_delay": 0.5,
            "max_dns_lookup_attempts": 30,
            "authorization_delay": 0.5,
            "max_authorization_attempts": 60,
            "key_size": 2048,
            "key_curve": "secp256r1",
            "file_user": pwd.getpwuid(os.getuid()).pw_name,
            "file_group": grp.getgrgid(os.getgid()).gr_name,
            "log_level": "debug",
            "reload_zone_command": lab.reload_zone_command(tmp / "challenge"),
            "ct_submit_logs": [],
            "ocsp_responder_urls": [],
        },
        "directories": {
            "pid": str(tmp / "run"),
            "log": str(tmp / "log"),
            "resource": str(tmp / "resource"),
            "private_key": str(tmp / "private"),
            "backup_key": str(tmp / "private"),
            "previous_key": None,
            "full_key": str(tmp / "private"),
            "certificate": str(tmp / "certs"),
            "full_certificate": str(tmp / "certs"),
            "chain": str(tmp / "certs"),
            "param": str(tmp / "params"),
            "challenge": str(tmp / "challenge"),
            "http_challenge": None,
            "hpkp": str(tmp / "hpkp"),
            "sct": str(tmp / "scts" / "{name}" / "{key_type}"),
            "ocsp": str(tmp / "ocsp"),
            "update_key": str(lab.keys_dir),
            "archive": str(tmp / "archive"),
            "temp": str(tmp / "tmp"),
        },
        "zone_update_keys": {
            "example.test": {"file": str(lab.zone_key_files["example.test"]),
                             "server": "127.0.0.1", "port": lab.dns_port},
            "example.net": {"file": str(lab.zone_key_files["example.net"]),
                            "server": "127.0.0.1", "port": lab.dns_port},
        },
    }


def make_config(tmp_path, lab, overrides=None):
    """Write tmp_path/acmebot.json: the lab's base config deep-merged with overrides."""
    path = Path(tmp_path) / "acmebot.json"
    path.write_text(json.dumps(deep_merge(base_config(tmp_path, lab), overrides), indent=2) + "\n")
    return path


def acmebot_command(config_path, *args, env=None, program=None):
    """(argv, env, cwd) of an acmebot run on config_path, as run_acmebot starts it (for a
    caller that needs its own Popen: a process group to kill, a wrapper such as strace).
    program: the command to run instead of this tree's acmebot under this python
    (an installed `acmebot`, say)."""
    child_env = dict(os.environ)
    # Only what the test gives: no passphrase or CA bundle leaking in from outside.
    for name in ("ACMEBOT_PASSPHRASE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        child_env.pop(name, None)
    child_env["ACMEBOT_TEST_NETNS"] = "1"
    child_env.update(env or {})
    config_path = Path(config_path)
    argv = [*([str(program)] if program else [sys.executable, str(ACMEBOT)]),
            "--config", str(config_path), "--accept-terms", *map(str, args)]
    return argv, child_env, config_path.parent


def run_acmebot(config_path, *args, input=None, env=None, timeout=300, wrapper=(), program=None):
    """Run acmebot as a subprocess; returns the CompletedProcess (text, captured).
    wrapper: argv prefix (e.g. nsenter into a mount namespace); program: see acmebot_command."""
    argv, child_env, cwd = acmebot_command(config_path, *args, env=env, program=program)
    return subprocess.run(
        [*map(str, wrapper), *argv], input=input, capture_output=True, text=True, cwd=cwd,
        env=child_env, timeout=timeout)
