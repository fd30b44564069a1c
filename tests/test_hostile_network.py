"""What acmebot does with a broken or hostile CA and hostile files around it (issue #9).

The real pebble answers behind tests/lab/ca_proxy.py, which damages chosen answers:
JSON of the wrong shape, truncated or garbage bodies, HTTP 500s, an answer that
drips one byte a second, an oversized body, an authorization for a name that was
not ordered, a chain that did not issue the leaf, a chain reduced to the leaf.
Each fault gives one clear error line and the right exit code, leaves the files
already installed byte for byte as they were, and the next run without the fault
issues normally.  Also: an http-01 token path or the lock file planted as a
symlink is never written through.

The HTTP session that bounds every request (ACME, OCSP, CT) is also tested in
process against a small loopback server that drips or floods its answers: no
runnable OCSP responder or CT log misbehaves on demand.

Every test has its own host names (prefix "hn").
"""

import base64
import gzip
import http.server
import json
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from lab.ca_proxy import CAProxy, problem
from conftest import make_config, run_acmebot
from test_issue import assert_clean, assert_ok, cert_blocks, check_issued, default_paths, snapshot
from test_units import ab

ACME_TIMEOUT = 2
STATE_FILES = ("resource/status.json", "resource/authorizations.json")


# -- helpers -----------------------------------------------------------------------------------------

@pytest.fixture
def proxy_factory(lab):
    proxies = []

    def start(intercept=None, rewrite=None):
        proxy = CAProxy(lab, lab.pebble, intercept, rewrite)
        proxies.append(proxy)
        return proxy
    yield start
    for proxy in proxies:
        proxy.stop()


class Fault:
    """A switchable fault: `on` is flipped by the test between runs."""

    def __init__(self, on=False):
        self.on = on
        self.hits = 0

    def hit(self):
        self.hits += 1


def config_for(tmp_path, lab, proxy, names, **more):
    overrides = {"settings": {"key_size": 0, "acme_directory_url": proxy.directory_url,
                              "acme_timeout": ACME_TIMEOUT},
                 "certificates": {name: {} for name in names}}
    overrides.update(more)
    return make_config(tmp_path, lab, overrides)


def error_lines(result):
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("ERROR: ") for line in lines), result.stderr
    return lines


def assert_untouched(tmp_path, before):
    """Every file that existed before the run is byte for byte as it was
    (the run's own records for --status and the authorization cache aside)."""
    after = snapshot(tmp_path)
    for path, entry in before.items():
        if path not in STATE_FILES and path != "acmebot.json":
            assert after.get(path) == entry, path


def assert_not_installed(tmp_path, name):
    for kind, path in default_paths(tmp_path, name, "ecdsa").items():
        if kind != "param":
            assert not path.exists(), path


def fail_then_recover(lab, tmp_path, proxy, fault, good, bad, exit_code, needles, **more):
    """`good` is issued first; with the fault on, ordering `bad` fails with
    `exit_code` and one error line holding every needle, and nothing installed
    changes; with the fault off, the next run issues `bad`."""
    lab.add_hosts("example.test", good.split(".")[0], bad.split(".")[0])
    assert_ok(run_acmebot(config_for(tmp_path, lab, proxy, [good], **more)))
    before = snapshot(tmp_path)
    config = config_for(tmp_path, lab, proxy, [good, bad], **more)
    fault.on = True
    result = run_acmebot(config, timeout=60)
    fault.on = False
    assert fault.hits, "the fault was never met"
    assert_clean(result)
    assert result.returncode == exit_code, result.stdout + result.stderr
    lines = error_lines(result)
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert_untouched(tmp_path, before)
    assert_not_installed(tmp_path, bad)

    assert_ok(run_acmebot(config))
    for name in (good, bad):
        check_issued(lab, default_paths(tmp_path, name, "ecdsa"), "ecdsa", [name])
    return result


def acme_path(request, prefix):
    return request["path"].startswith(prefix)


def csr_names(request):
    """The DNS names of the CSR in a finalize request."""
    csr = (request["payload"] or {}).get("csr", "")
    der = base64.urlsafe_b64decode(csr + "=" * (-len(csr) % 4))
    san = x509.load_der_x509_csr(der).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName)


def json_answer(status, body, headers=None):
    return status, dict({"Content-Type": "application/json"}, **(headers or {})), body


# -- malformed answers -------------------------------------------------------------------------------

def test_directory_that_is_a_json_array(lab, tmp_path, proxy_factory):
    fault = Fault()

    def intercept(request):
        if fault.on and request["path"] == "/dir":
            fault.hit()
            return json_answer(200, b"[1, 2]")
    proxy = proxy_factory(intercept)
    fail_then_recover(lab, tmp_path, proxy, fault, "hndir1.example.test", "hndir2.example.test", 3,
                      ["fetching the ACME directory", "not a JSON object", "[1, 2]"])


def test_directory_without_new_order(lab, tmp_path, proxy_factory):
    fault = Fault()

    def rewrite(request, status, headers, body):
        if fault.on and request["path"] == "/dir":
            fault.hit()
            directory = json.loads(body)
            del directory["newOrder"]
            return status, headers, json.dumps(directory).encode()
    proxy = proxy_factory(rewrite=rewrite)
    fail_then_recover(lab, tmp_path, proxy, fault, "hndir3.example.test", "hndir4.example.test", 3,
                      ["fetching the ACME directory", "no URL for newOrder"])


def test_truncated_new_order_answer(lab, tmp_path, proxy_factory):
    fault = Fault()

    def rewrite(request, status, headers, body):
        if fault.on and request["path"] == proxy.new_order_path:
            fault.hit()
            return status, headers, body[: len(body) // 2]
    proxy = proxy_factory(rewrite=rewrite)
    fail_then_recover(lab, tmp_path, proxy, fault, "hntrunc1.example.test", "hntrunc2.example.test", 3,
                      ["certificate hntrunc2.example.test (ecdsa)", "creating the order", "not valid JSON"])


def test_garbage_authorization(lab, tmp_path, proxy_factory):
    fault = Fault()

    def rewrite(request, status, headers, body):
        if fault.on and acme_path(request, "/authZ/"):
            fault.hit()
            return status, headers, b"\x00\xffthis is not JSON at all"
    proxy = proxy_factory(rewrite=rewrite)
    fail_then_recover(lab, tmp_path, proxy, fault, "hngarb1.example.test", "hngarb2.example.test", 3,
                      ["creating the order for hngarb2.example.test", "not valid JSON"])


def test_authorization_of_the_wrong_shape(lab, tmp_path, proxy_factory):
    """Valid JSON, but not an authorization: the identifier is a number."""
    fault = Fault()

    def rewrite(request, status, headers, body):
        if fault.on and acme_path(request, "/authZ/"):
            fault.hit()
            authorization = json.loads(body)
            authorization["identifier"] = 42
            return status, headers, json.dumps(authorization).encode()
    proxy = proxy_factory(rewrite=rewrite)
    fail_then_recover(lab, tmp_path, proxy, fault, "hnshape1.example.test", "hnshape2.example.test", 3,
                      ["creating the order for hnshape2.example.test", "not a valid ACME object"])


def test_garbage_challenge_answer(lab, tmp_path, proxy_factory):
    fault = Fault()

    def rewrite(request, status, headers, body):
        if fault.on and acme_path(request, "/chalZ/"):
            fault.hit()
            return status, headers, b'{"type": "http-01", "status": "valid", "url": '
    proxy = proxy_factory(rewrite=rewrite)
    fail_then_recover(lab, tmp_path, proxy, fault, "hnchal1.example.test", "hnchal2.example.test", 3,
                      ["certificate hnchal2.example.test (ecdsa)", "answering the challenge for hnchal2",
                       "not valid JSON"])


def test_garbage_new_account_answer_registers_nothing(lab, tmp_path, proxy_factory):
    name = "hnacct.example.test"
    fault = Fault(on=True)

    def rewrite(request, status, headers, body):
        if fault.on and acme_path(request, "/sign-me-up"):
            fault.hit()
            return status, headers, b"]["
    proxy = proxy_factory(rewrite=rewrite)
    lab.add_hosts("example.test", "hnacct")
    config = config_for(tmp_path, lab, proxy, [name])
    result = run_acmebot(config)
    assert fault.hits == 1
    assert_clean(result)
    assert result.returncode == 3, result.stdout + result.stderr
    lines = error_lines(result)
    assert len(lines) == 1 and "registering the ACME account" in lines[0] and "not valid JSON" in lines[0], lines
    assert not (tmp_path / "resource" / "registration.json").exists()
    assert_not_installed(tmp_path, name)
    fault.on = False
    assert_ok(run_acmebot(config))
    check_issued(lab, default_paths(tmp_path, name, "ecdsa"), "ecdsa", [name])


def test_finalize_answer_of_the_wrong_shape(lab, tmp_path, proxy_factory):
    fault = Fault()

    def rewrite(request, status, headers, body):
        if fault.on and acme_path(request, "/finalize-order/"):
            fault.hit()
            return status, headers, b'{"status": 12, "authorizations": "none"}'
    proxy = proxy_factory(rewrite=rewrite)
    fail_then_recover(lab, tmp_path, proxy, fault, "hnfin1.example.test", "hnfin2.example.test", 3,
                      ["certificate hnfin2.example.test (ecdsa)", "finalizing the order", "not a valid ACME object"])


def test_truncated_certificate_download(lab, tmp_path, proxy_factory):
    fault = Fault()

    def rewrite(request, status, headers, body):
        if fault.on and acme_path(request, "/certZ/"):
            fault.hit()
            return status, headers, body[: len(body) // 3]
    proxy = proxy_factory(rewrite=rewrite)
    fail_then_recover(lab, tmp_path, proxy, fault, "hncert1.example.test", "hncert2.example.test", 3,
                      ["certificate hncert2.example.test (ecdsa)", "contains no certificate"])


@pytest.mark.parametrize("host, content_type, body, needle", [
    ("hn500a", "text/html", b"<html><body>\n  Internal   oops\n</body></html>",
     "'<html><body> Internal oops </body></html>'"),
    ("hn500b", "text/plain", b"", "(empty)"),
    ("hn500c", "application/problem+json", b"[1, 2]", "'[1, 2]'"),
])
def test_server_error_500_without_a_problem_document(lab, tmp_path, proxy_factory, host, content_type, body, needle):
    fault = Fault()

    def intercept(request):
        if fault.on and request["path"] == proxy.new_order_path:
            fault.hit()
            return 500, {"Content-Type": content_type}, body
    proxy = proxy_factory(intercept)
    fail_then_recover(lab, tmp_path, proxy, fault, f"{host}1.example.test", f"{host}2.example.test", 3,
                      [f"creating the order for {host}2.example.test", "HTTP 500 Internal Server Error from", needle])


# -- slow and big answers ----------------------------------------------------------------------------

def test_answer_dripped_one_byte_a_second_ends_at_the_deadline(lab, tmp_path, proxy_factory):
    """requests' timeout is per socket read: without a deadline for the whole
    answer, a CA sending a byte a second would hold the run (and its lock) for
    the ~700 s of this body.  The subprocess timeout (60 s, 30 x acme_timeout)
    is the bound; no duration is asserted."""
    fault = Fault()

    def rewrite(request, status, headers, body):
        if fault.on and request["path"] == proxy.new_order_path:
            fault.hit()
            return status, headers, body, {"drip": 1.0}
    proxy = proxy_factory(rewrite=rewrite)
    fail_then_recover(lab, tmp_path, proxy, fault, "hndrip1.example.test", "hndrip2.example.test", 3,
                      ["creating the order for hndrip2.example.test",
                       f"no complete answer from {proxy.directory_url.removesuffix('/dir')}",
                       f"within {ACME_TIMEOUT} s"])


def test_oversized_authorization(lab, tmp_path, proxy_factory):
    fault = Fault()

    def rewrite(request, status, headers, body):
        if fault.on and acme_path(request, "/authZ/"):
            fault.hit()
            authorization = json.loads(body)
            authorization["padding"] = "x" * (2 << 20)
            return status, headers, json.dumps(authorization).encode()
    proxy = proxy_factory(rewrite=rewrite)
    fail_then_recover(lab, tmp_path, proxy, fault, "hnbig1.example.test", "hnbig2.example.test", 3,
                      ["creating the order for hnbig2.example.test", "larger than 1048576 bytes"])


# -- hostile answers ---------------------------------------------------------------------------------

def test_authorization_for_a_name_not_ordered(lab, tmp_path, proxy_factory):
    """The CA names another identifier in the authorization: acmebot must not
    answer a challenge (write a file or a TXT record) for it."""
    fault = Fault()

    def rewrite(request, status, headers, body):
        if fault.on and acme_path(request, "/authZ/"):
            fault.hit()
            authorization = json.loads(body)
            authorization["identifier"]["value"] = "hnevil.example.test"
            return status, headers, json.dumps(authorization).encode()
    proxy = proxy_factory(rewrite=rewrite)
    fail_then_recover(lab, tmp_path, proxy, fault, "hnname1.example.test", "hnname2.example.test", 3,
                      ["creating the order for hnname2.example.test",
                       "authorization for 'hnevil.example.test', which was not ordered"])
    assert lab.txt("_acme-challenge.hnevil.example.test") == []


def test_authorization_whose_identifier_changes_while_polled(lab, tmp_path, proxy_factory):
    fault = Fault()
    seen = set()

    def rewrite(request, status, headers, body):
        if fault.on and acme_path(request, "/authZ/"):
            if request["path"] not in seen:         # the order's first look at it is left alone
                seen.add(request["path"])
                return None
            fault.hit()
            authorization = json.loads(body)
            authorization["identifier"]["value"] = "hnevil.example.test"
            return status, headers, json.dumps(authorization).encode()
    proxy = proxy_factory(rewrite=rewrite)
    fail_then_recover(lab, tmp_path, proxy, fault, "hnpoll1.example.test", "hnpoll2.example.test", 3,
                      ["certificate hnpoll2.example.test (ecdsa)", "checking the authorization of hnpoll2",
                       "the CA changed the identifier of the authorization"])


def impostor_of(cert_pem):
    """A self-signed certificate with the same subject and key type as
    `cert_pem` but another key: it names the leaf's issuer but did not sign it."""
    real = x509.load_pem_x509_certificate(cert_pem)
    if isinstance(real.public_key(), rsa.RSAPublicKey):
        key = rsa.generate_private_key(65537, real.public_key().key_size)
    else:
        key = ec.generate_private_key(real.public_key().curve)
    impostor = (x509.CertificateBuilder().subject_name(real.subject).issuer_name(real.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(real.not_valid_before_utc).not_valid_after(real.not_valid_after_utc)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
    return impostor.public_bytes(serialization.Encoding.PEM)


def test_chain_whose_intermediate_did_not_issue_the_leaf(lab, tmp_path, proxy_factory):
    fault = Fault()

    def rewrite(request, status, headers, body):
        if fault.on and acme_path(request, "/certZ/"):
            fault.hit()
            blocks = cert_blocks(body)
            return status, headers, blocks[0] + impostor_of(blocks[1]) + b"".join(blocks[2:])
    proxy = proxy_factory(rewrite=rewrite)
    fail_then_recover(lab, tmp_path, proxy, fault, "hnchain1.example.test", "hnchain2.example.test", 3,
                      ["certificate hnchain2.example.test (ecdsa)", "chain certificate 1",
                       "did not issue the certificate: its signature does not verify"])


def test_chain_that_is_another_ca_certificate(lab, tmp_path, proxy_factory):
    """The intermediate replaced by pebble's root: the names do not match."""
    fault = Fault()

    def rewrite(request, status, headers, body):
        if fault.on and acme_path(request, "/certZ/"):
            fault.hit()
            return status, headers, cert_blocks(body)[0] + lab.pebble_root_pem().encode()
    proxy = proxy_factory(rewrite=rewrite)
    fail_then_recover(lab, tmp_path, proxy, fault, "hnroot1.example.test", "hnroot2.example.test", 3,
                      ["certificate hnroot2.example.test (ecdsa)", "did not issue the certificate"])


def test_bad_nonce_until_retries_run_out_while_answering_a_challenge_is_a_ca_error(lab, tmp_path, proxy_factory):
    """A CA failure during validation is exit 3 (the CA), not 4 (validation)."""
    fault = Fault()

    def intercept(request):
        if fault.on and acme_path(request, "/chalZ/"):
            fault.hit()
            return problem(400, "badNonce", "JWS has an invalid anti-replay nonce")
    proxy = proxy_factory(intercept)
    fail_then_recover(lab, tmp_path, proxy, fault, "hnnonce1.example.test", "hnnonce2.example.test", 3,
                      ["certificate hnnonce2.example.test (ecdsa)", "answering the challenge for hnnonce2",
                       "badNonce"])
    assert fault.hits == 6


def test_one_order_failing_at_finalize_does_not_stop_the_other(lab, tmp_path, proxy_factory):
    bad, good = "hnpair1.example.test", "hnpair2.example.test"
    fault = Fault(on=True)

    def rewrite(request, status, headers, body):
        if fault.on and acme_path(request, "/finalize-order/") and csr_names(request) == [bad]:
            fault.hit()
            return status, headers, b"<<garbage>>"
    proxy = proxy_factory(rewrite=rewrite)
    lab.add_hosts("example.test", "hnpair1", "hnpair2")
    config = config_for(tmp_path, lab, proxy, [bad, good])
    result = run_acmebot(config)
    assert fault.hits == 1
    assert_clean(result)
    assert result.returncode == 3, result.stdout + result.stderr
    lines = error_lines(result)
    assert len(lines) == 1 and f"certificate {bad} (ecdsa)" in lines[0] and "not valid JSON" in lines[0], lines
    check_issued(lab, default_paths(tmp_path, good, "ecdsa"), "ecdsa", [good])
    assert f"Issued certificate {good}" in result.stdout
    assert_not_installed(tmp_path, bad)
    fault.on = False
    assert_ok(run_acmebot(config))
    check_issued(lab, default_paths(tmp_path, bad, "ecdsa"), "ecdsa", [bad])


def test_ca_sending_only_the_leaf(lab, tmp_path, proxy_factory):
    """A CA that sends the leaf without its chain: the certificate is installed
    as sent (nothing to check it against), without a chain file, and the next
    run leaves it alone (no chain file is due for a certificate without one)."""
    name = "hnleaf.example.test"
    fault = Fault(on=True)

    def rewrite(request, status, headers, body):
        if fault.on and acme_path(request, "/certZ/"):
            fault.hit()
            return status, headers, cert_blocks(body)[0]
    proxy = proxy_factory(rewrite=rewrite)
    lab.add_hosts("example.test", "hnleaf")
    config = config_for(tmp_path, lab, proxy, [name])
    result = run_acmebot(config)
    assert_ok(result)
    assert f"Issued certificate {name} (ecdsa)" in result.stdout
    assert fault.hits == 1
    paths = default_paths(tmp_path, name, "ecdsa")
    blocks = cert_blocks(paths["certificate"].read_bytes())
    assert len(blocks) == 1
    leaf = x509.load_pem_x509_certificate(blocks[0])
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == [name]
    assert not paths["chain"].exists()
    orders = len(proxy.new_orders())
    before = snapshot(tmp_path)
    assert_ok(run_acmebot(config))
    assert len(proxy.new_orders()) == orders
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("resource/")} == \
        {k: v for k, v in before.items() if not k.startswith("resource/")}


# -- hostile files -----------------------------------------------------------------------------------

def test_http01_token_path_planted_as_symlink_is_not_followed(lab, tmp_path, proxy_factory):
    """Someone who can write the http-01 directory (the web server's user) puts a
    symlink where the challenge file will go: acmebot replaces the link, never
    writes through it, and the validation still succeeds."""
    name = "hnlink.example.test"
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    planted = []

    def rewrite(request, status, headers, body):
        if acme_path(request, "/authZ/"):
            for challenge in json.loads(body).get("challenges", []):
                if challenge["type"] == "http-01" and challenge["status"] == "pending":
                    link = lab.http_challenge_dir / challenge["token"]
                    if not link.is_symlink():
                        link.symlink_to(victim)
                        planted.append(link)
    proxy = proxy_factory(rewrite=rewrite)
    lab.add_hosts("example.test", "hnlink")
    config = config_for(tmp_path, lab, proxy, [name], http_challenges={name: str(lab.http_challenge_dir)})
    try:
        result = run_acmebot(config)
        assert planted, "no http-01 challenge was offered"
        assert_ok(result)
        assert victim.read_bytes() == b"precious\n"
        assert not any(link.is_symlink() or link.exists() for link in planted)
        check_issued(lab, default_paths(tmp_path, name, "ecdsa"), "ecdsa", [name])
    finally:
        for link in planted:
            if link.is_symlink():
                link.unlink()


def test_lock_file_planted_as_symlink_is_refused(lab, tmp_path, proxy_factory):
    name = "hnlock.example.test"
    lab.add_hosts("example.test", "hnlock")
    proxy = proxy_factory()
    config = config_for(tmp_path, lab, proxy, [name])
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    lock = tmp_path / "run" / "acmebot.pid"
    lock.parent.mkdir()
    lock.symlink_to(victim)
    result = run_acmebot(config)
    assert_clean(result)
    assert result.returncode == 5, result.stdout + result.stderr
    lines = error_lines(result)
    assert len(lines) == 1 and str(lock) in lines[0] and "symbolic link" in lines[0], lines
    assert victim.read_bytes() == b"precious\n"
    assert_not_installed(tmp_path, name)
    lock.unlink()
    assert_ok(run_acmebot(config))
    check_issued(lab, default_paths(tmp_path, name, "ecdsa"), "ecdsa", [name])


# -- the bounded HTTP session itself (used for ACME, OCSP and CT), in process ------------------------

class SlowServer:
    """A loopback HTTP server whose answers are chosen by path: the peer that
    OCSP responders and CT logs could be (none of those is runnable here)."""
    BIG = 200_000

    def __init__(self):
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def end_headers(self):          # one request per connection, said so
                self.send_header("Connection", "close")
                super().end_headers()

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.close_connection = True
                try:
                    getattr(self, "answer_" + self.path.strip("/"))()
                except OSError:         # the client gave up
                    pass

            def answer_ok(self):
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def drip(self, data):
                for i in range(len(data)):
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
                    time.sleep(0.5)

            def answer_drip_body(self):
                self.send_response(200)
                self.send_header("Content-Length", "100")
                self.end_headers()
                self.drip(b"x" * 100)

            def answer_drip_headers(self):
                self.drip(b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * 100)

            def answer_declared_big(self):
                self.send_response(200)
                self.send_header("Content-Length", str(SlowServer.BIG))
                self.end_headers()
                self.wfile.write(b"x" * SlowServer.BIG)

            def answer_undeclared_big(self):        # no length: the body ends when the connection does
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"x" * SlowServer.BIG)

            def answer_gzip_bomb(self):             # small on the wire, big once decoded
                data = gzip.compress(b"\0" * SlowServer.BIG * 10)
                self.send_response(200)
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow_server():
    server = SlowServer()
    yield server
    server.stop()


@pytest.mark.parametrize("path, needle", [
    ("drip_body", "no complete answer from {url}drip_body within 1 s"),
    ("drip_headers", "no complete answer from {url}drip_headers within 1 s"),
    ("declared_big", "the answer from {url}declared_big is larger than 65536 bytes (200000)"),
    ("undeclared_big", "the answer from {url}undeclared_big is larger than 65536 bytes"),
    ("gzip_bomb", "the answer from {url}gzip_bomb is larger than 65536 bytes"),
])
def test_bounded_session_refuses_slow_and_big_answers(slow_server, path, needle):
    """Each answer would take 50 s (drips) or be 200 KB to 2 MB: the session
    ends each at the 1 s deadline or the 64 KiB cap, and stays usable."""
    session = ab.bounded_session(1, {"": ab.OCSP_BODY_LIMIT})
    with pytest.raises(ab.BadAnswer) as caught:
        session.post(slow_server.url + path, data=b"request", timeout=1)
    assert str(caught.value) == needle.format(url=slow_server.url)
    assert session.post(slow_server.url + "ok", data=b"request", timeout=1).content == b"ok"
