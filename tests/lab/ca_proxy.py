"""A loopback HTTPS proxy in front of a pebble, standing in for a CA's 429/503 answers.

pebble has no rate limits and never answers 503 with Retry-After, so tests that
need those put this proxy between acmebot and a pebble:

    proxy = CAProxy(lab, pebble, intercept)     # started; proxy.stop() at the end
    proxy.directory_url                          https://127.0.0.1:<port>/dir
    proxy.requests                               every request: dicts with "method",
                                                 "path", "payload" (decoded JWS payload
                                                 or None), "status" (answered), "time"
    proxy.new_orders()                           the requests to the newOrder path

The proxy terminates TLS with the lab's localhost certificate (trusted through
lab.pebble_ca_bundle, like pebble itself) and forwards every request to pebble
with the Host header unchanged: pebble builds every URL it hands out (directory,
Location, Link, order and authorization URLs) from the request's Host, so all of
them point at the proxy without any rewriting, and the JWS "url" acmebot signs
matches what pebble expects.

`intercept(request)` is called for each request (the dict above, without
"status", plus "raw": (headers, body), so that an intercept can `proxy.forward`
it itself) and returns None to forward it, or (status, headers, body) to answer
it in pebble's place.  Such answers carry a fresh Replay-Nonce fetched from
pebble, as a real CA's error responses do (the acme library insists on one).

`rewrite(request, status, headers, body)` (optional) is called with pebble's
answer to each forwarded request and returns None to pass it on unchanged, or
the (status, headers, body) to send instead (a damaged or hostile CA: garbage
JSON, a changed identifier, another chain).

Any answer may carry a fourth element, a dict of how to send it:
{"drip": seconds} sends the body one byte every `seconds` (a CA that never
finishes its answer; the Content-Length is the full body's).
"""

import base64
import http.client
import http.server
import json
import ssl
import threading
import time
import urllib.parse

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection",
              "te", "trailer", "upgrade"}


def jws_payload(body):
    """The decoded JSON payload of a flattened JWS body (None for POST-as-GET or non-JWS)."""
    try:
        payload = json.loads(body)["payload"]
    except (ValueError, KeyError, TypeError):
        return None
    if not payload:
        return None
    try:
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except ValueError:
        return None


def problem(status, typ, detail, retry_after=None):
    """An (status, headers, body) answer with an RFC 7807 problem document."""
    headers = {"Content-Type": "application/problem+json"}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    body = json.dumps({"type": f"urn:ietf:params:acme:error:{typ}", "detail": detail,
                       "status": status}).encode()
    return status, headers, body


class CAProxy:
    def __init__(self, lab, pebble, intercept=None, rewrite=None):
        self.upstream = ("127.0.0.1", pebble.port)
        self.intercept = intercept or (lambda request: None)
        self.rewrite = rewrite or (lambda request, status, headers, body: None)
        self.requests = []
        self._lock = threading.Lock()
        self._client_context = ssl.create_default_context(cafile=str(lab.pebble_ca_bundle))
        server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_context.load_cert_chain(str(lab.tls_cert), str(lab.tls_key))
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = {"method": self.command, "path": self.path, "payload": jws_payload(body) if body else None,
                           "time": time.monotonic(), "raw": (dict(self.headers.items()), body)}
                answer = proxy.intercept(request)
                if answer is None:
                    answer = proxy.forward(self.command, self.path, dict(self.headers.items()), body)
                    answer = proxy.rewrite(request, *answer) or answer
                else:
                    answer = list(answer)
                    answer[1] = dict(answer[1])
                    answer[1].setdefault("Replay-Nonce", proxy.fresh_nonce(self.headers.get("Host")))
                    answer[1].setdefault("Cache-Control", "no-store")
                status, headers, data = answer[:3]
                how = answer[3] if len(answer) > 3 else {}
                request["status"] = status
                with proxy._lock:
                    proxy.requests.append(request)
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() not in HOP_BY_HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                if "drip" in how:           # the connection is the answer's alone, as a real server says
                    self.send_header("Connection", "close")
                self.end_headers()
                if self.command == "HEAD":
                    return
                if "drip" not in how:
                    self.wfile.write(data)
                    return
                try:
                    for i in range(len(data)):
                        self.wfile.write(data[i:i + 1])
                        self.wfile.flush()
                        time.sleep(how["drip"])
                except OSError:         # the client gave up
                    pass

            do_GET = do_POST = do_HEAD = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = server_context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.directory_url = f"https://127.0.0.1:{self.port}/dir"
        self._thread = threading.Thread(target=self.server.serve_forever, name="ca-proxy", daemon=True)
        self._thread.start()
        directory = json.loads(self.forward("GET", "/dir", {"Host": f"127.0.0.1:{self.port}"}, b"")[2])
        self.new_order_path = urllib.parse.urlsplit(directory["newOrder"]).path
        self.new_nonce_path = urllib.parse.urlsplit(directory["newNonce"]).path

    def forward(self, method, path, headers, body):
        """One request to pebble, Host header kept; returns (status, headers, body)."""
        connection = http.client.HTTPSConnection(*self.upstream, context=self._client_context, timeout=30)
        try:
            headers = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
            connection.request(method, path, body=body or None, headers=headers)
            response = connection.getresponse()
            data = response.read()
            # several Link headers: keep them all (joined, as RFC 9110 allows)
            out = {}
            for name, value in response.getheaders():
                out[name] = f"{out[name]}, {value}" if name in out else value
            return response.status, out, data
        finally:
            connection.close()

    def fresh_nonce(self, host):
        return self.forward("HEAD", self.new_nonce_path, {"Host": host}, b"")[1]["Replay-Nonce"]

    def new_orders(self):
        with self._lock:
            return [r for r in self.requests if r["method"] == "POST" and r["path"] == self.new_order_path]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
