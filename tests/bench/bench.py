#!/usr/bin/env python3
"""Issuance benchmark: acmebot against the original acmebot 2.17.3 and certbot (issue #6).

Run it through tests/bench/run (as root): that script installs the competitors into their own
virtualenvs and then runs this file, which

  1. moves itself into a network namespace that has only a loopback interface (the tests'
     own isolation, lab.isolate_network), so the CA, DNS and every tool stay on 127.0.0.1;
  2. starts the tests' lab (lab.Lab: pebble with PEBBLE_VA_NOSLEEP=1, PEBBLE_AUTHZREUSE=100,
     PEBBLE_WFE_NONCEREJECT=0), with its BIND replaced by one serving the zone bench.test on
     127.0.0.1:53 (the original acmebot resolves through /etc/resolv.conf and port 53);
  3. for each N, variant and repeat, runs every tool on the same N certificates
     (cK.bench.test + www.cK.bench.test) from a clean state (fresh directories, fresh ACME
     account), alternating the tools (the starting tool rotates per repeat), then runs each
     tool again with nothing to do (the no-op run);
  4. prints a table (median/min/max issuance wall time, no-op median, peak RSS, ratios) and
     where acmebot's own time goes for the largest N (from a separate, timestamped --detail run),
     and the no-op time for --big-noop configured certificates.

Peak memory is the largest maximum resident set size (ru_maxrss from wait4) of any process of
a tool's run: for certbot, the largest over its invocations.

Variants: A = one P-256 key per certificate; B = RSA-2048 + P-256 per certificate
(certbot: two lineages per certificate, --cert-name cK-rsa / cK-ecdsa).
"""

import argparse
import contextlib
import base64
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
TESTS_DIR = BENCH_DIR.parent
sys.path.insert(0, str(TESTS_DIR))

# The tests' own set-up, reused: the namespace and the lab from lab.py.
from lab import (ACMEBOT, REQUIRED_BINARIES, Lab, LabError, Server, isolate_network, named_options,  # noqa: E402
                 parse_key_text, tsig_key_text)


ZONE = "bench.test"
KEY_NAME = "update.bench.test"
DNS_PORT = 53
TOOLS = ("acmebot", "original", "certbot")
VARIANTS = {"A": "P-256", "B": "RSA-2048 + P-256"}
DEFAULT_CACHE = os.environ.get("ACMEBOT_BENCH_CACHE") or os.path.expanduser("~/.cache/acmebot-bench")
RUN_TIMEOUT = 3600
GNU_TIME = "/usr/bin/time"   # Debian package `time`
# The acmebot that is measured: a copy taken when the benchmark starts (the repository's file
# may be edited while a long run goes on), set by snapshot_acmebot().
UNDER_TEST = {"path": ACMEBOT, "description": str(ACMEBOT)}


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the lab: lab.Lab with a BIND for bench.test on 127.0.0.1:53 ------------------------------

class BenchLab(Lab):
    """lab.Lab whose BIND serves only the zone bench.test, on 127.0.0.1:53.

    Port 53 is free inside our own network namespace.  Hosts c1..cMAX and www.c1..www.cMAX
    get explicit A records (an _acme-challenge TXT under a wildcard-only name would break
    the wildcard, see test-servers.md).  pebble (started by Lab.start) validates through it.
    """

    def __init__(self, root, max_hosts):
        super().__init__(root)
        self.max_hosts = max_hosts

    def _start_named(self):
        self.bind_dir.mkdir(mode=0o755)
        self.keys_dir.mkdir(mode=0o755, exist_ok=True)
        text = subprocess.run(["tsig-keygen", "-a", "hmac-sha256", KEY_NAME],
                              check=True, capture_output=True, text=True).stdout
        key = parse_key_text(text)[KEY_NAME]
        self.keys[KEY_NAME] = key
        self.tsig_secret = key.secret
        path = self.keys_dir / f"{KEY_NAME}.key"
        path.write_text(tsig_key_text(KEY_NAME, base64.b64encode(key.secret).decode()))
        path.chmod(0o600)
        self.zone_key_files[ZONE] = path
        self.dns_port = DNS_PORT
        records = "".join(f"c{i} IN A 127.0.0.1\nwww.c{i} IN A 127.0.0.1\n"
                          for i in range(1, self.max_hosts + 1))
        (self.bind_dir / f"{ZONE}.zone").write_text(
            f"$TTL 300\n"
            f"@ IN SOA ns1.{ZONE}. hostmaster.{ZONE}. 1 3600 600 86400 60\n"
            f"@ IN NS ns1.{ZONE}.\n"
            f"ns1 IN A 127.0.0.1\n"
            f"@ IN A 127.0.0.1\n" + records)
        conf = self.bind_dir / "named.conf"
        conf.write_text(
            f"{text}\n" + named_options(self.bind_dir, DNS_PORT) +
            f'zone "{ZONE}" {{\n'
            f"    type primary;\n"
            f'    file "{ZONE}.zone";\n'
            f"    update-policy {{ grant {KEY_NAME} zonesub ANY; }};\n"
            f"    allow-transfer {{ none; }};\n"
            f"}};\n")
        self.named = Server("named", ["named", "-g", "-c", conf], self.bind_dir / "named.log",
                            cwd=self.bind_dir)
        self._servers.append(self.named)
        self.named.wait_ready(lambda: self.query(ZONE, "SOA", timeout=0.5))


# -- running one process, measured ------------------------------------------------------------

class Measured:
    def __init__(self, wall, maxrss_kib, returncode, output, cpu=None):
        self.wall = wall
        self.maxrss_kib = maxrss_kib
        self.returncode = returncode
        self.output = output
        self.cpu = cpu          # user + system seconds of the tool and its reaped children


def run_measured(argv, env, cwd, output_path, line_times=None, timeout=RUN_TIMEOUT):
    """Run argv; wall time from fork to reaping, peak RSS from wait4 (KiB).

    Output goes to output_path.  With line_times (a list), stdout+stderr are read through a
    pipe instead and each line is appended as (seconds since start, line)."""
    # Started through GNU time, a small process: a child forked straight from this (large)
    # Python process would report this process's peak RSS as its own (Linux carries the
    # forking process's high-water mark across exec).  time's own %M is the child's
    # ru_maxrss (KiB), which includes the child's reaped descendants (their maximum).
    rss_path = Path(output_path).with_suffix(".rss")
    argv = [GNU_TIME, "-q", "-f", "%U %S %M", "-o", str(rss_path), *map(str, argv)]
    start = time.perf_counter()
    if line_times is None:
        with open(output_path, "wb") as out:
            process = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                       stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            reader = None
    else:
        process = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)

        def read():
            with open(output_path, "wb") as out:
                for raw in process.stdout:
                    line_times.append((time.perf_counter() - start, raw.decode(errors="replace").rstrip("\n")))
                    out.write(raw)
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
    def kill():  # the whole process group: time, the tool and its children
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        _, status, _ = os.wait4(process.pid, 0)
    finally:
        timer.cancel()
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if reader is not None:
        reader.join(30)
    output = Path(output_path).read_text(errors="replace")
    try:
        user, system, maxrss = rss_path.read_text().split()[-3:]
        maxrss, cpu = int(maxrss), float(user) + float(system)
    except (OSError, ValueError, IndexError):
        maxrss, cpu = 0, None
    return Measured(wall, maxrss, process.returncode, output, cpu)


class ToolFailed(RuntimeError):
    pass


# -- the tools --------------------------------------------------------------------------------

def names(i):
    return f"c{i}.{ZONE}", f"www.c{i}.{ZONE}"


class Tool:
    name = "?"

    def __init__(self, lab, cache, variant, pebble=None, timeout=RUN_TIMEOUT):
        self.lab = lab
        self.cache = Path(cache)
        self.variant = variant
        self.pebble = pebble or lab.pebble
        self.timeout = timeout      # seconds per process: a hung CA must not stall the run for long

    def prepare(self, work, n):
        """Write the configuration for a clean state with n certificates in `work`."""
        raise NotImplementedError

    def issue(self, work, n):
        raise NotImplementedError

    def noop(self, work, n):
        raise NotImplementedError

    def check(self, work, n):
        """Raise ToolFailed unless every certificate is on disk."""
        raise NotImplementedError

    def _run(self, argv, env, cwd, label, work, line_times=None):
        result = run_measured(argv, env, cwd, Path(work) / f"{label}.out", line_times, self.timeout)
        if result.returncode != 0:
            tail = "\n".join(result.output.splitlines()[-30:])
            raise ToolFailed(f"{self.name} {label} exited with status {result.returncode}: "
                             f"{' '.join(map(str, argv))}\n{tail}")
        return result


def _clean_env(extra=None):
    env = dict(os.environ)
    for name in ("ACMEBOT_PASSPHRASE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PYTHONPATH"):
        env.pop(name, None)
    env.update(extra or {})
    return env


def _check_pems(paths):
    from cryptography import x509
    for path in paths:
        if not path.exists():
            raise ToolFailed(f"missing certificate {path}")
        x509.load_pem_x509_certificate(path.read_bytes())


class Acmebot(Tool):
    """This repository's acmebot."""
    name = "acmebot"

    def key_types(self):
        return ["ecdsa"] if self.variant == "A" else ["rsa", "ecdsa"]

    def config(self, work, n):
        work = Path(work)
        return {
            "account": {"email": f"admin@{ZONE}"},
            "settings": {
                "acme_directory_url": self.pebble.directory_url,
                "acme_ca_bundle": self.lab.pebble_ca_bundle,
                "dns_resolvers": [f"127.0.0.1:{DNS_PORT}"],
                "dns_port": DNS_PORT,
                "key_size": 2048,
                "key_curve": "secp256r1",
                "file_user": "root",
                "file_group": "root",
                "log_level": None,
                "ct_submit_logs": [],
                "ocsp_responder_urls": [],
                "reload_zone_command": None,
            },
            "directories": {
                "pid": str(work / "run"), "log": str(work / "log"), "resource": str(work / "resource"),
                "private_key": str(work / "private"), "backup_key": str(work / "private"),
                "previous_key": None, "full_key": str(work / "private"),
                "certificate": str(work / "certs"), "full_certificate": str(work / "certs"),
                "chain": str(work / "certs"), "param": str(work / "params"),
                "challenge": str(work / "challenge"), "http_challenge": None,
                "hpkp": str(work / "hpkp"), "sct": str(work / "scts" / "{name}" / "{key_type}"),
                "ocsp": str(work / "ocsp"), "update_key": str(self.lab.keys_dir),
                "archive": str(work / "archive"), "temp": str(work / "tmp"),
            },
            "zone_update_keys": {
                ZONE: {"file": str(self.lab.zone_key_files[ZONE]), "server": "127.0.0.1", "port": DNS_PORT},
            },
            "certificates": {names(i)[0]: {"alt_names": {ZONE: [f"c{i}", f"www.c{i}"]},
                                           "key_types": self.key_types()}
                             for i in range(1, n + 1)},
        }

    def prepare(self, work, n):
        path = Path(work) / "acmebot.json"
        path.write_text(json.dumps(self.config(work, n), indent=1) + "\n")
        return path

    def argv(self, work, *extra):
        return [sys.executable, str(UNDER_TEST["path"]), "--config", str(Path(work) / "acmebot.json"),
                "--accept-terms", *extra]

    def issue(self, work, n, extra=(), line_times=None, label="issue"):
        return self._run(self.argv(work, *extra), _clean_env(), work, label, work, line_times)

    def noop(self, work, n):
        return self._run(self.argv(work), _clean_env(), work, "noop", work)

    def check(self, work, n):
        suffixes = {"rsa": ".rsa", "ecdsa": ".ecdsa"}
        _check_pems([Path(work) / "certs" / f"{names(i)[0]}{suffixes[t]}.pem"
                     for i in range(1, n + 1) for t in self.key_types()])


class Original(Acmebot):
    """PyPI acmebot 2.17.3, in its own virtualenv, resolving through /etc/resolv.conf.

    It runs in a private mount namespace (unshare --mount) where a resolv.conf with
    `nameserver 127.0.0.1` is bind-mounted over /etc/resolv.conf; the network namespace
    has only loopback anyway."""
    name = "original"

    def config(self, work, n):
        work = Path(work)
        return {
            "account": {"email": f"admin@{ZONE}"},
            "settings": {
                "acme_directory_url": self.pebble.directory_url,
                "acme_directory_verify_ssl": self.lab.pebble_ca_bundle,
                "key_types": self.key_types(),
                "key_size": 2048,
                "key_curve": "secp256r1",
                # openssl dhparam 2048 takes 5-50 s per certificate here: the issue's 57 s
                # for 50 certificates cannot include it.  acmebot writes RFC 7919 groups.
                "dhparam_size": 0,
                "file_user": "root",
                "file_group": "root",
                "log_user": "root",
                "log_group": "root",
                "log_level": None,
                "ct_submit_logs": [],
                "ocsp_responder_urls": [],
                "hpkp_days": 0,
                "reload_zone_command": None,
                "public_suffix_list_url": "http://127.0.0.1:9/public_suffix_list.dat",
            },
            "directories": {
                "pid": str(work / "run"), "log": str(work / "log"), "resource": str(work / "resource"),
                "private_key": str(work / "private"), "backup_key": str(work / "private"),
                "previous_key": None, "full_key": str(work / "private"),
                "certificate": str(work / "certs"), "full_certificate": str(work / "certs"),
                "chain": str(work / "certs"), "param": str(work / "params"),
                "challenge": str(work / "challenge"), "http_challenge": None,
                "hpkp": None, "ocsp": None, "sct": str(work / "scts" / "{name}" / "{key_type}"),
                "update_key": str(self.lab.keys_dir), "archive": str(work / "archive"),
                "temp": str(work / "tmp"),
            },
            "zone_update_keys": {
                ZONE: {"file": str(self.lab.zone_key_files[ZONE]), "server": "127.0.0.1", "port": DNS_PORT},
            },
            "certificates": {names(i)[0]: {"alt_names": {ZONE: [f"c{i}", f"www.c{i}"]}}
                             for i in range(1, n + 1)},
        }

    def prepare(self, work, n):
        work = Path(work)
        for directory in ("run", "log", "resource", "private", "certs", "params", "challenge",
                          "archive", "tmp"):
            (work / directory).mkdir(mode=0o755, exist_ok=True)
        # A public suffix list of its own, so it never tries to fetch one.
        (work / "resource" / "public_suffix_list.dat").write_text("// bench\ntest\n")
        (work / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        return super().prepare(work, n)

    def argv(self, work, *extra):
        work = Path(work)
        script = self.cache / "original" / "bin" / "acmebot"
        inner = (f"mount --bind {work / 'resolv.conf'} /etc/resolv.conf && "
                 f"exec {script} --config {work / 'acmebot.json'} --accept {' '.join(extra)}")
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", inner]


class Certbot(Tool):
    """certbot 5.8 with certbot-dns-rfc2136: one `certonly` per certificate (and key type)."""
    name = "certbot"

    def lineages(self, n):
        for i in range(1, n + 1):
            if self.variant == "A":
                yield names(i)[0], ["--key-type", "ecdsa", "--elliptic-curve", "secp256r1"], i
            else:
                yield f"{names(i)[0]}-rsa", ["--key-type", "rsa", "--rsa-key-size", "2048"], i
                yield f"{names(i)[0]}-ecdsa", ["--key-type", "ecdsa", "--elliptic-curve", "secp256r1"], i

    def dirs(self, work):
        work = Path(work)
        return ["--config-dir", str(work / "config"), "--work-dir", str(work / "work"),
                "--logs-dir", str(work / "logs")]

    def prepare(self, work, n):
        work = Path(work)
        secret = base64.b64encode(self.lab.tsig_secret).decode()
        ini = work / "rfc2136.ini"
        ini.write_text(f"dns_rfc2136_server = 127.0.0.1\n"
                       f"dns_rfc2136_port = {DNS_PORT}\n"
                       f"dns_rfc2136_name = {KEY_NAME}\n"
                       f"dns_rfc2136_secret = {secret}\n"
                       f"dns_rfc2136_algorithm = HMAC-SHA256\n")
        ini.chmod(0o600)

    def env(self):
        return _clean_env({"REQUESTS_CA_BUNDLE": self.lab.pebble_ca_bundle})

    def issue(self, work, n):
        work = Path(work)
        certbot = str(self.cache / "certbot" / "bin" / "certbot")
        total, peak = 0.0, 0
        for cert_name, key_args, i in self.lineages(n):
            argv = [certbot, "certonly", "--non-interactive", "--agree-tos", "-m", f"admin@{ZONE}",
                    "--server", self.pebble.directory_url, *self.dirs(work),
                    "--dns-rfc2136", "--dns-rfc2136-credentials", str(work / "rfc2136.ini"),
                    "--dns-rfc2136-propagation-seconds", "0",
                    "--cert-name", cert_name, "-d", names(i)[0], "-d", names(i)[1], *key_args]
            result = self._run(argv, self.env(), work, f"issue-{cert_name}", work)
            total += result.wall
            peak = max(peak, result.maxrss_kib)
        return Measured(total, peak, 0, "")

    def noop(self, work, n):
        certbot = str(self.cache / "certbot" / "bin" / "certbot")
        argv = [certbot, "renew", "--non-interactive", "--no-random-sleep-on-renew", *self.dirs(work)]
        return self._run(argv, self.env(), work, "noop", work)

    def check(self, work, n):
        _check_pems([Path(work) / "config" / "live" / cert_name / "cert.pem"
                     for cert_name, _, _ in self.lineages(n)])


TOOL_CLASSES = {"acmebot": Acmebot, "original": Original, "certbot": Certbot}


# -- the benchmark ------------------------------------------------------------------------------

def fmt_s(value):
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def fmt_mib(kib):
    return "-" if not kib else f"{kib / 1024:.0f} MiB"


class Bench:
    def __init__(self, args, lab, root):
        self.args = args
        self.lab = lab
        self.root = Path(root)
        self.results = []       # dicts: tool variant n repeat issue noop rss_issue rss_noop error
        self.counter = 0

    def workdir(self, tool, variant, n, repeat):
        self.counter += 1
        path = self.root / "runs" / f"{self.counter:03d}-{tool}-{variant}-n{n}-r{repeat}"
        path.mkdir(parents=True)
        return path

    def repeats_for(self, tool, n):
        if tool == "certbot" and self.args.certbot_max_repeats_at and n >= self.args.certbot_max_repeats_at:
            return min(self.args.repeats, self.args.certbot_repeats)
        return self.args.repeats

    def one(self, tool_name, variant, n, repeat):
        tool = TOOL_CLASSES[tool_name](self.lab, self.args.cache, variant, timeout=300 + 6 * n)
        work = self.workdir(tool_name, variant, n, repeat)
        record = {"tool": tool_name, "variant": variant, "n": n, "repeat": repeat, "dir": str(work)}
        try:
            tool.prepare(work, n)
            requests_before = self.ca_requests()
            issued = tool.issue(work, n)
            tool.check(work, n)
            record.update(issue=issued.wall, rss_issue=issued.maxrss_kib)
            requests_mid = self.ca_requests()
            noop = tool.noop(work, n)
            tool.check(work, n)
            record.update(noop=noop.wall, rss_noop=noop.maxrss_kib,
                          issue_ca_requests=requests_mid - requests_before,
                          noop_ca_requests=self.ca_requests() - requests_mid)
            log(f"{tool_name:8} {variant} N={n:<4} r{repeat}: issue {issued.wall:7.2f} s "
                f"({fmt_mib(issued.maxrss_kib)}), no-op {noop.wall:5.2f} s ({fmt_mib(noop.maxrss_kib)}), "
                f"CA requests {record['issue_ca_requests']}/{record['noop_ca_requests']}")
            if not self.args.keep:
                shutil.rmtree(work, ignore_errors=True)
        except (ToolFailed, OSError, subprocess.SubprocessError) as error:
            record["error"] = str(error)
            log(f"{tool_name:8} {variant} N={n:<4} r{repeat}: FAILED (kept {work}):\n{error}")
        self.results.append(record)
        self.save()
        return record

    def ca_requests(self, pebble=None):
        """HTTP requests pebble has logged so far (it logs one line per request)."""
        try:
            text = (pebble or self.lab.pebble).server.log_path.read_text(errors="replace")
        except OSError:
            return 0
        return len(re.findall(r" (?:GET|POST|HEAD) \S* -> calling handler", text))

    def save(self):
        path = self.root / "results.json"
        path.write_text(json.dumps(self.results, indent=1) + "\n")

    def matrix(self):
        tools = self.args.tools
        for n in self.args.n:
            for variant in self.args.variants:
                for repeat in range(1, self.args.repeats + 1):
                    # alternate: the starting tool rotates with each repeat
                    shift = (repeat - 1) % len(tools)
                    for tool in tools[shift:] + tools[:shift]:
                        if tool == "certbot" and n not in self.args.certbot_n:
                            continue
                        if repeat > self.repeats_for(tool, n):
                            continue
                        self.one(tool, variant, n, repeat)

    # -- where acmebot's time goes
    def breakdown(self, n, variant):
        tool = Acmebot(self.lab, self.args.cache, variant)
        work = self.workdir("acmebot-detail", variant, n, 0)
        tool.prepare(work, n)
        lines = []
        env_note = "PYTHONUNBUFFERED=1"
        os.environ["PYTHONUNBUFFERED"] = "1"
        try:
            result = tool.issue(work, n, extra=("--detail",), line_times=lines, label="detail")
        finally:
            os.environ.pop("PYTHONUNBUFFERED", None)
            (work / "detail.times").write_text("".join(f"{t:.4f}\t{line}\n" for t, line in lines))
        return result, lines, work, env_note

    # -- the big no-op
    def big_noop(self, n):
        # Its own pebble, without authorization reuse: pebble 2.4.0 deadlocked here (every
        # handler waiting on its MemoryStore lock, one newOrder in FindValidAuthorization, which
        # only authorization reuse calls) after ~1,600 orders with 8 concurrent newOrders.
        pebble = self.lab.start_pebble(f"big-{n}", extra_env={"PEBBLE_AUTHZREUSE": "0"})
        tool = Acmebot(self.lab, self.args.cache, "A", pebble=pebble, timeout=300 + n)
        work = self.workdir("acmebot-big", "A", n, 0)
        tool.prepare(work, n)
        issued = tool.issue(work, n)
        tool.check(work, n)
        before = self.ca_requests(pebble)
        runs = [tool.noop(work, n) for _ in range(self.args.repeats)]
        return issued, runs, self.ca_requests(pebble) - before, work


def median(values):
    return statistics.median(values) if values else None


def summarize(results, tools, variants, ns):
    rows = []
    for variant in variants:
        for n in ns:
            for tool in tools:
                done = [r for r in results if r["tool"] == tool and r["variant"] == variant and r["n"] == n]
                ok = [r for r in done if "error" not in r]
                if not done:
                    continue
                issue = [r["issue"] for r in ok]
                rows.append({
                    "tool": tool, "variant": variant, "n": n, "runs": len(ok), "failed": len(done) - len(ok),
                    "issue_median": median(issue), "issue_min": min(issue) if issue else None,
                    "issue_max": max(issue) if issue else None,
                    "noop_median": median([r["noop"] for r in ok]),
                    "rss_issue": max([r["rss_issue"] for r in ok], default=0),
                    "rss_noop": max([r["rss_noop"] for r in ok], default=0),
                    "noop_ca_requests": max([r["noop_ca_requests"] for r in ok], default=None),
                })
    return rows


def print_table(rows):
    print()
    print("Issuance and no-op wall times (seconds; clean state per run: fresh directories and ACME account)")
    header = (f"{'tool':9} {'variant':17} {'N':>4} {'runs':>4} {'issue med':>9} {'min':>7} {'max':>7} "
              f"{'s/cert':>7} {'no-op med':>9} {'no-op CA req':>12} {'peak RSS issue':>14} {'peak RSS no-op':>14}")
    print(header)
    print("-" * len(header))
    for row in rows:
        per_cert = row["issue_median"] / row["n"] if row["issue_median"] is not None else None
        failed = f" ({row['failed']} failed)" if row["failed"] else ""
        print(f"{row['tool']:9} {row['variant'] + ' ' + VARIANTS[row['variant']]:17} {row['n']:>4} {row['runs']:>4} "
              f"{fmt_s(row['issue_median']):>9} {fmt_s(row['issue_min']):>7} {fmt_s(row['issue_max']):>7} "
              f"{fmt_s(per_cert):>7} {fmt_s(row['noop_median']):>9} "
              f"{'-' if row['noop_ca_requests'] is None else row['noop_ca_requests']:>12} "
              f"{fmt_mib(row['rss_issue']):>14} {fmt_mib(row['rss_noop']):>14}{failed}")
    print()
    print("Ratios (competitor median / acmebot median; issue target: >= 10x original, >= 20x certbot)")
    header = f"{'variant':8} {'N':>4} {'vs':9} {'issue ratio':>11} {'no-op ratio':>11}"
    print(header)
    print("-" * len(header))
    by = {(r["tool"], r["variant"], r["n"]): r for r in rows}
    for row in rows:
        if row["tool"] == "acmebot":
            continue
        mine = by.get(("acmebot", row["variant"], row["n"]))
        if not mine or not mine["issue_median"] or row["issue_median"] is None:
            continue
        issue_ratio = row["issue_median"] / mine["issue_median"]
        noop_ratio = (row["noop_median"] / mine["noop_median"]) if mine["noop_median"] else None
        print(f"{row['variant']:8} {row['n']:>4} {row['tool']:9} {issue_ratio:>10.1f}x "
              f"{(f'{noop_ratio:.1f}x' if noop_ratio else '-'):>11}")


def print_slopes(rows, variants):
    """Least-squares slope of median issuance time against N, per tool and variant."""
    print()
    print("Issuance growth: least-squares fit of median time = a + b*N (b = seconds per extra certificate)")
    for variant in variants:
        for tool in TOOLS:
            points = [(r["n"], r["issue_median"]) for r in rows
                      if r["tool"] == tool and r["variant"] == variant and r["issue_median"] is not None]
            if len(points) < 2:
                continue
            xs, ys = zip(*points)
            mx, my = statistics.fmean(xs), statistics.fmean(ys)
            sxx = sum((x - mx) ** 2 for x in xs)
            if not sxx:
                continue
            b = sum((x - mx) * (y - my) for x, y in points) / sxx
            a = my - b * mx
            fitted = ", ".join(f"N={x}: {y:.2f} s (fit {a + b * x:.2f})" for x, y in points)
            print(f"  {tool:9} {variant}: a = {a:.2f} s, b = {b:.3f} s/cert   [{fitted}]")


def snapshot_acmebot(rev, directory):
    """Copy the acmebot to measure into directory: the work tree's file, or `git show REV:acmebot`."""
    import hashlib
    repo = str(ACMEBOT.parent)
    if rev:
        done = subprocess.run(["git", "-C", repo, "show", f"{rev}:{ACMEBOT.name}"], capture_output=True)
        if done.returncode != 0:
            raise SystemExit(f"bench: git show {rev}:{ACMEBOT.name}: {done.stderr.decode().strip()}")
        data = done.stdout
        commit = subprocess.run(["git", "-C", repo, "log", "-1", "--format=%h", rev, "--", ACMEBOT.name],
                                capture_output=True, text=True).stdout.strip()
        origin = f"git {rev} (last changed in {commit})"
    else:
        data = ACMEBOT.read_bytes()
        commit = subprocess.run(["git", "-C", repo, "log", "-1", "--format=%h", "--", ACMEBOT.name],
                                capture_output=True, text=True).stdout.strip() or "?"
        dirty = subprocess.run(["git", "-C", repo, "diff", "--quiet", "HEAD", "--", ACMEBOT.name],
                               capture_output=True).returncode
        state = {0: "as committed", 1: "with uncommitted changes"}.get(dirty, "git status unknown")
        origin = f"work tree, last commit {commit}, {state}"
    path = Path(directory) / "acmebot"
    path.write_bytes(data)
    path.chmod(0o755)
    version = re.search(rb'^VERSION = "([^"]+)"', data, re.M)
    UNDER_TEST["path"] = path
    UNDER_TEST["description"] = (f"acmebot {version.group(1).decode() if version else '?'} from {origin}, "
                                 f"sha256 {hashlib.sha256(data).hexdigest()[:12]}")


# -- the no-op, side by side ------------------------------------------------------------------
#
# --noop-compare: the no-op run of several acmebot versions and forms (and the original) on N
# certificates, paired.  Each acmebot contender works on its own copy of one state issued by
# the work tree's acmebot (the quiet record names the program that wrote it: a state shared by
# two programs would send every run the full way); the original issues its own.  After one
# untimed run each (acmebot's first no-op after an issuance is a full run that leaves the quiet
# record), every repeat runs each contender once, the first one rotating (A B C, B C A, ...).

class Contender:
    def __init__(self, label, command=None, original=False):
        self.label = label
        self.command = command          # argv before --config (None: the original's own argv)
        self.original = original


def acmebot_source(rev, directory):
    """What `pip install DIR` needs, from git REV or ('.') from the work tree."""
    repo = ACMEBOT.parent
    directory.mkdir(parents=True)
    for name in ("acmebot", "pyproject.toml", "README.rst", "LICENSE", "requirements.txt"):
        if rev == ".":
            shutil.copy2(repo / name, directory / name)
            continue
        done = subprocess.run(["git", "-C", str(repo), "show", f"{rev}:{name}"], capture_output=True)
        if done.returncode != 0:
            raise SystemExit(f"bench: git show {rev}:{name}: {done.stderr.decode().strip()}")
        (directory / name).write_bytes(done.stdout)
    (directory / "acmebot").chmod(0o755)
    return directory


def make_contenders(specs, root, cache):
    """REV (the script, run by this python), REV:installed (`pip install` of REV into a
    virtualenv of this python under the cache, as pipx does), or original."""
    import hashlib
    contenders = []
    for number, spec in enumerate(specs):
        if spec == "original":
            contenders.append(Contender("original 2.17.3", original=True))
            continue
        rev, _, form = spec.partition(":")
        if form not in ("", "installed"):
            raise SystemExit(f"bench: --noop-compare {spec}: REV, REV:installed or original")
        source = acmebot_source(rev, Path(root) / "sources" / f"{number}")
        digest = hashlib.sha256((source / "acmebot").read_bytes() + (source / "pyproject.toml").read_bytes())
        digest = digest.hexdigest()[:12]
        label = f"{'work tree' if rev == '.' else rev} {'installed' if form else 'script'} ({digest})"
        if not form:
            contenders.append(Contender(label, [sys.executable, str(source / "acmebot")]))
            continue
        venv = Path(cache) / f"installed-{digest}"
        if not (venv / "bin" / "acmebot").exists():
            log(f"installing {spec} into {venv}")
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                            str(source)], check=True, env=dict(os.environ, PIP_ROOT_USER_ACTION="ignore"))
        contenders.append(Contender(label, [str(venv / "bin" / "acmebot")]))
    return contenders


def noop_compare(bench, contenders, n, repeats):
    """{label: [Measured, ...]} of the paired no-op runs at N certificates."""
    lab, cache = bench.lab, bench.args.cache
    # a pebble of its own, without authorization reuse (see big_noop)
    pebble = lab.start_pebble(f"noop-{n}", extra_env={"PEBBLE_AUTHZREUSE": "0"})
    issuer = Acmebot(lab, cache, "A", pebble=pebble, timeout=300 + 6 * n)
    base = bench.workdir("noop-issued", "A", n, 0)
    config = issuer.prepare(base, n)
    if n > 100:     # pebble 2.4.0 deadlocked here too with 8 concurrent newOrders (see the README)
        raw = json.loads(config.read_text())
        raw["settings"]["max_workers"] = 2
        config.write_text(json.dumps(raw, indent=1) + "\n")
    issuer.issue(base, n)
    issuer.check(base, n)
    runs = {}
    for number, contender in enumerate(contenders):
        work = bench.workdir(f"noop-{number}", "A", n, 0)
        if contender.original:
            tool = Original(lab, cache, "A", pebble=pebble, timeout=300 + 6 * n)
            tool.prepare(work, n)
            tool.issue(work, n)
            tool.check(work, n)
            argv = tool.argv(work)
        else:
            shutil.copytree(base, work, symlinks=True, dirs_exist_ok=True)
            config = work / "acmebot.json"
            config.write_text(config.read_text().replace(str(base), str(work)))
            argv = [*contender.command, "--config", str(config), "--accept-terms"]
        runs[contender.label] = (argv, work, [])

    def once(label, tag):
        argv, work, _ = runs[label]
        result = run_measured(argv, _clean_env(), work, Path(work) / f"noop-{tag}.out")
        if result.returncode != 0:
            raise ToolFailed(f"{label}: no-op exited with status {result.returncode}: {result.output[-2000:]}")
        return result

    labels = [c.label for c in contenders]
    for label in labels:
        once(label, "warmup")
    for repeat in range(repeats):
        shift = repeat % len(labels)
        for label in labels[shift:] + labels[:shift]:
            runs[label][2].append(once(label, repeat))
        log(f"no-op N={n} repeat {repeat + 1}/{repeats}: " + ", ".join(
            f"{label.split(' (')[0]} {runs[label][2][-1].wall:.3f} s" for label in labels))
    return {label: measured for label, (_, _, measured) in runs.items()}


def print_noop_compare(n, results):
    print()
    print(f"No-op runs, N={n} certificates (variant A), paired and alternating; wall and CPU (user+sys) seconds")
    header = f"{'contender':44} {'runs':>4} {'wall med':>8} {'min':>7} {'max':>7} {'CPU med':>8} {'peak RSS':>9}"
    print(header)
    print("-" * len(header))
    for label, measured in results.items():
        walls = [m.wall for m in measured]
        cpus = [m.cpu for m in measured if m.cpu is not None]
        print(f"{label:44} {len(walls):>4} {median(walls):>8.3f} {min(walls):>7.3f} {max(walls):>7.3f} "
              f"{(median(cpus) if cpus else float('nan')):>8.3f} {fmt_mib(max(m.maxrss_kib for m in measured)):>9}")
    original = next((m for label, m in results.items() if label.startswith("original")), None)
    if original:
        reference = median([m.wall for m in original])
        for label, measured in results.items():
            if not label.startswith("original"):
                print(f"  original / {label.split(' (')[0]}: {reference / median([m.wall for m in measured]):.1f}x")


def parse_list(text, cast=str):
    return [cast(part) for part in text.split(",") if part.strip()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=lambda t: parse_list(t, int), default=[1, 10, 50],
                        help="numbers of certificates (default 1,10,50)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per tool, variant and N (default 3)")
    parser.add_argument("--tools", type=parse_list, default=list(TOOLS),
                        help="acmebot,original,certbot (default all)")
    parser.add_argument("--variants", type=parse_list, default=["A", "B"],
                        help="A (P-256), B (RSA-2048 + P-256); default A,B")
    parser.add_argument("--certbot-n", type=lambda t: parse_list(t, int), default=None,
                        help="the N at which certbot runs (default: all of --n)")
    parser.add_argument("--certbot-repeats", type=int, default=1,
                        help="repeats for certbot at N >= --certbot-max-repeats-at (default 1: it is slow)")
    parser.add_argument("--certbot-max-repeats-at", type=int, default=50)
    parser.add_argument("--big-noop", type=int, default=1000,
                        help="also time acmebot's no-op run with this many certificates (0: skip)")
    parser.add_argument("--noop-compare", type=parse_list, metavar="SPEC,...",
                        help="only compare no-op runs, paired: each SPEC is REV (that acmebot file, run by this "
                             "python), REV:installed (pip-installed into a virtualenv, as pipx does; '.' is the "
                             "work tree) or original, e.g. main,HEAD,HEAD:installed,original")
    parser.add_argument("--noop-n", type=lambda t: parse_list(t, int), default=[50],
                        help="with --noop-compare: numbers of certificates (default 50)")
    parser.add_argument("--noop-repeats", type=int, default=15,
                        help="with --noop-compare: timed runs per contender and N (default 15)")
    parser.add_argument("--no-breakdown", action="store_true",
                        help="skip the timestamped --detail run that shows where acmebot's time goes")
    parser.add_argument("--cache", default=DEFAULT_CACHE, help=f"virtualenvs of the competitors ({DEFAULT_CACHE})")
    parser.add_argument("--acmebot-rev", metavar="REV",
                        help="measure `git show REV:acmebot` instead of the work tree's acmebot "
                             "(either way a copy taken at the start is run)")
    parser.add_argument("--report", metavar="RESULTS_JSON",
                        help="only print the tables from a results.json an earlier run left (no lab)")
    parser.add_argument("--keep", action="store_true", help="keep every run's directory")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    for tool in args.tools:
        if tool not in TOOLS:
            parser.error(f"unknown tool {tool!r} (choose from {', '.join(TOOLS)})")
    for variant in args.variants:
        if variant not in VARIANTS:
            parser.error(f"unknown variant {variant!r} (A or B)")
    if args.certbot_n is None:
        args.certbot_n = list(args.n)
    args.tools = [t for t in TOOLS if t in args.tools]   # acmebot first in the table
    if args.report:
        results = json.loads(Path(args.report).read_text())
        results = results["runs"] if isinstance(results, dict) else results
        ns = sorted({r["n"] for r in results})
        variants = [v for v in VARIANTS if any(r["variant"] == v for r in results)]
        rows = summarize(results, args.tools, variants, ns)
        print_table(rows)
        print_slopes(rows, variants)
        return 0
    needed = ["original"] if "original" in (args.noop_compare or ()) else [] if args.noop_compare else args.tools
    for tool, path in (("original", "original/bin/acmebot"), ("certbot", "certbot/bin/certbot")):
        if tool in needed and not (Path(args.cache) / path).exists():
            parser.error(f"{tool}: {Path(args.cache) / path} not found (run tests/bench/run, which installs it)")

    if os.geteuid() != 0:
        print("bench: must run as root (network and mount namespaces, port 53)", file=sys.stderr)
        return 3
    missing = [name for name in REQUIRED_BINARIES + ("nsupdate", "unshare", "mount", GNU_TIME) if shutil.which(name) is None]
    if missing:
        print(f"bench: required program(s) not found: {', '.join(missing)}", file=sys.stderr)
        return 3
    root = Path(tempfile.mkdtemp(prefix="acmebot-bench-", dir=os.environ.get("TMPDIR", "/var/tmp")))
    root.chmod(0o755)
    contenders = make_contenders(args.noop_compare, root, args.cache) if args.noop_compare else None  # pip: before
    error = isolate_network()
    if error:
        print(f"bench: cannot isolate the benchmark on loopback: {error}", file=sys.stderr)
        return 3
    if contenders:
        return main_noop_compare(args, root, contenders)
    snapshot_acmebot(args.acmebot_rev, root)
    log(f"measuring {UNDER_TEST['description']}")
    log(f"state under {root}")
    max_hosts = max(list(args.n) + [args.big_noop])
    started = time.monotonic()
    try:
        with BenchLab(root / "lab", max_hosts) as lab:
            log(f"lab up: BIND 127.0.0.1:{DNS_PORT} (zone {ZONE}, {max_hosts} hosts), pebble {lab.directory_url}")
            bench = Bench(args, lab, root)
            bench.matrix()
            rows = summarize(bench.results, args.tools, args.variants, args.n)
            extra = {}
            if not args.no_breakdown and "acmebot" in args.tools:
                try:
                    extra["breakdown"] = bench.breakdown(max(args.n), args.variants[0])
                except (ToolFailed, OSError) as error:
                    extra["breakdown_error"] = str(error)
                    log(f"the --detail run failed: {error}")
            if args.big_noop:
                try:
                    extra["big"] = bench.big_noop(args.big_noop)
                except (ToolFailed, OSError, LabError) as error:
                    extra["big_error"] = str(error)
                    log(f"the {args.big_noop}-certificate run failed: {error}")
    except LabError as error:
        print(f"bench: the lab could not be started: {error}", file=sys.stderr)
        return 3
    report(args, rows, bench, extra, time.monotonic() - started)
    print(f"measured: {UNDER_TEST['description']}")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"(other work on this {os.cpu_count()}-core machine during the run skews every tool's figures)")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "runs": bench.results}, indent=1) + "\n")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if any("error" in r for r in bench.results) else 0


def main_noop_compare(args, root, contenders):
    """--noop-compare: the lab, then the paired no-op runs for each --noop-n."""
    started = time.monotonic()
    results = {}
    try:
        with BenchLab(root / "lab", max(args.noop_n)) as lab:
            bench = Bench(args, lab, root)
            for n in args.noop_n:
                # the original issues 1,000 certificates in ~20 minutes: it is compared up to 100
                results[n] = noop_compare(bench, [c for c in contenders if not (c.original and n > 100)],
                                          n, args.noop_repeats)
    except LabError as error:
        print(f"bench: the lab could not be started: {error}", file=sys.stderr)
        return 3
    except ToolFailed as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    for n, measured in results.items():
        print_noop_compare(n, measured)
    print()
    print(f"total benchmark time {(time.monotonic() - started) / 60:.1f} min; python {sys.version.split()[0]} "
          f"({sys.executable}); load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} cores")
    if args.out:
        Path(args.out).write_text(json.dumps({str(n): {label: [{"wall": m.wall, "cpu": m.cpu, "maxrss_kib": m.maxrss_kib}
                                                            for m in measured] for label, measured in runs.items()}
                                              for n, runs in results.items()}, indent=1) + "\n")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def report(args, rows, bench, extra, elapsed):
    print_table(rows)
    print_slopes(rows, args.variants)
    if "breakdown" in extra:
        n, variant = max(args.n), args.variants[0]
        timed = [r for r in rows if r["tool"] == "acmebot" and r["n"] == n and r["variant"] == variant]
        print_breakdown(*extra["breakdown"], timed_median=timed[0]["issue_median"] if timed else None)
    for key in ("breakdown_error", "big_error"):
        if key in extra:
            tail = "\n".join(extra[key].splitlines()[:12])
            print(f"\n{key.replace('_', ' ')}: {tail}")
    if "big" in extra:
        issued, runs, requests, _ = extra["big"]
        walls = [r.wall for r in runs]
        print()
        print(f"acmebot with {args.big_noop} configured certificates (variant A): issued in {issued.wall:.1f} s "
              f"(peak RSS {fmt_mib(issued.maxrss_kib)}); no-op median {median(walls):.2f} s "
              f"(min {min(walls):.2f}, max {max(walls):.2f}, {len(walls)} runs), "
              f"peak RSS {fmt_mib(max(r.maxrss_kib for r in runs))}, requests to the CA: {requests}")
    print()
    print(f"settings: repeats {args.repeats} (certbot: {args.certbot_repeats} at N >= {args.certbot_max_repeats_at}), "
          f"certbot at N in {args.certbot_n}; total benchmark time {elapsed / 60:.1f} min")


def _first(lines, pattern, last=False):
    found = [(t, line) for t, line in lines if re.search(pattern, line)]
    if not found:
        return None, None
    return found[-1] if last else found[0]


def print_breakdown(result, lines, work, env_note, timed_median=None):
    """Phases of one acmebot run, from its --detail lines timestamped as they arrived.

    The phases overlap in acmebot (keys are generated while orders are created, orders
    and finalizations run in a thread pool), so they are given as a timeline of marks."""
    print()
    n_certs = len(json.loads((Path(work) / "acmebot.json").read_text())["certificates"])
    note = f"; the timed runs' median was {timed_median:.2f} s" if timed_median else ""
    print(f"Where acmebot's time goes: {n_certs} certificates, one extra run with --detail and {env_note}, "
          f"each output line timestamped on arrival; total {result.wall:.2f} s (--detail prints every "
          f"ACME request and response, which costs time itself{note})")
    marks = [
        ("process start", 0.0),
        ("first request to the CA (imports, config, keys on disk)", _first(lines, r"^Sending \w+ request")[0]),
        ("account registered", _first(lines, r"registered ACME account")[0]),
        ("all orders created and authorizations fetched: 'answering N challenges'", _first(lines, r"answering \d+ challenges?")[0]),
        ("DNS UPDATE sent ('set N TXT records')", _first(lines, r"set \d+ TXT records?")[0]),
        ("TXT records visible on every name server", _first(lines, r"TXT records visible")[0]),
        ("first authorization valid", _first(lines, r"authorized \(dns-01\)")[0]),
        ("last authorization valid", _first(lines, r"authorized \(dns-01\)", last=True)[0]),
        ("first certificate issued (finalize + download)", _first(lines, r"^Issued certificate")[0]),
        ("last certificate issued", _first(lines, r"^Issued certificate", last=True)[0]),
        ("process exit (files written, challenges removed)", result.wall),
    ]
    previous = 0.0
    for label, t in marks:
        if t is None:
            print(f"  {'':>8}  {'':>7}  {label}: (line not found)")
            continue
        print(f"  {t:8.3f}  +{t - previous:6.3f}  {label}")
        previous = t
    keygen = [float(m.group(1)) / (1000 if m.group(2) == "ms" else 1) for _, line in lines
              for m in [re.search(r"generated \w+ \w+ key for .* in ([\d.]+) (ms|s)\b", line)] if m]
    requests = [line for _, line in lines if re.match(r"Sending \w+ request", line)]
    kinds = {}
    for line in requests:
        m = re.match(r"Sending (\w+) request to https?://[^/]+/([^/.:]*)", line)
        if m:
            key = f"{m.group(1)} /{m.group(2)}"
            kinds[key] = kinds.get(key, 0) + 1
    visible = _first(lines, r"TXT records visible on every name server after ([\d.]+) s")[1]
    updates = [line for _, line in lines if "DNS UPDATE" in line]
    print(f"  key generation: {len(keygen)} keys, {sum(keygen):.2f} s summed over threads "
          f"(max {max(keygen, default=0):.2f} s)")
    print(f"  ACME requests: {len(requests)} ({', '.join(f'{k} x{v}' for k, v in sorted(kinds.items()))})")
    propagation = re.search(r"after ([\d.]+) s", visible or "")
    print(f"  DNS: {len(updates)} UPDATE message(s); TXT visible "
          f"{propagation.group(0) if propagation else '(no propagation line)'} (acmebot's own measure)")


if __name__ == "__main__":
    sys.exit(main())
