#!/usr/bin/env python3
"""A guided tour of acmebot against the test lab (run it through ../demo, as root).

What it does, all inside a private network namespace that has only a loopback interface
(the same isolation the tests use, lab.isolate_network), so nothing reaches the Internet:

  1. starts the lab (lab.py): BIND 9 serving example.test, pebble (an ACME test CA) and
     nginx, on free 127.0.0.1 ports, with all state in a temporary directory;
  2. writes an acmebot config with lab.make_config: certificate demo.example.test
     (demo + www, dns-01 through RFC 2136 updates to BIND, RSA and ECDSA) and
     certificate web.example.test (http-01 through nginx's challenge directory);
  3. runs acmebot --detail, so the ACME requests and the DNS UPDATEs are visible;
  4. lists the files acmebot wrote (path, mode, size) and what each certificate says
     (names, issuer, expiry);
  5. runs acmebot again (--verbose): everything is in place, so nothing is changed;
  6. stops every server and removes the temporary directory.

Exit status: 0 when both runs succeed and the second changes nothing; acmebot's exit
status if a run fails; 1 for any other failure; 3 when the lab cannot be set up.
"""

import argparse
import os
import shutil
import signal
import stat
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # tests/: the lab package

# The tests' own set-up, reused as is: the namespace and the lab from lab.py.
from lab import REQUIRED_BINARIES, Lab, LabError, isolate_network, make_config, run_acmebot  # noqa: E402

ZONE = "example.test"
BOLD, RESET = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "")


def banner(text):
    print(f"\n{BOLD}== {text} =={RESET}", flush=True)


def show_run(result):
    """Print what acmebot printed (stdout, then stderr) and its exit status."""
    if result.stdout:
        sys.stdout.write(result.stdout)
    if result.stderr:
        sys.stdout.write(result.stderr)
    print(f"-- acmebot exited with status {result.returncode}", flush=True)


def snapshot(directory, skip=()):
    """{path: (mode, size, mtime_ns, inode)} for every regular file under directory."""
    files = {}
    for path in sorted(Path(directory).rglob("*")):
        if path.is_file() and path.name not in skip:
            st = path.stat()
            files[path] = (stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns, st.st_ino)
    return files


def describe_certificate(path):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtensionOID
    cert = x509.load_pem_x509_certificate(path.read_bytes())  # the first block: the leaf
    san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    public = cert.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        key = f"RSA {public.key_size} bits"
    elif isinstance(public, ec.EllipticCurvePublicKey):
        key = f"ECDSA {public.curve.name}"
    else:
        key = type(public).__name__
    print(f"  {path.name}")
    print(f"      names:   {', '.join(san.get_values_for_type(x509.DNSName))}")
    print(f"      key:     {key}")
    print(f"      issuer:  {cert.issuer.rfc4514_string()}")
    print(f"      expires: {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")


def demo(root):
    banner("starting the lab: BIND 9, pebble and nginx on 127.0.0.1")
    with Lab(root / "lab") as lab:
        print(f"  BIND 9 (zone {ZONE})      127.0.0.1:{lab.dns_port}")
        print(f"  pebble ACME directory    {lab.directory_url}")
        print(f"  nginx (http-01)          127.0.0.1:{lab.http_port}, serving {lab.http_challenge_dir}")
        # A records: pebble resolves the names it validates through the lab's BIND.
        lab.add_hosts(ZONE, "demo", "web")

        work = root / "acmebot"
        work.mkdir(mode=0o700)
        config = make_config(work, lab, {
            "certificates": {
                f"demo.{ZONE}": {
                    "alt_names": {ZONE: ["demo", "www"]},
                    "key_types": ["rsa", "ecdsa"],
                },
                f"web.{ZONE}": {
                    "alt_names": {ZONE: ["web"]},
                    "key_types": ["ecdsa"],
                },
            },
            "http_challenges": {f"web.{ZONE}": str(lab.http_challenge_dir)},
        })
        banner(f"the configuration: {config}")
        print(config.read_text(), end="")

        first = run_step(config, "first", "--detail", "")
        if first.returncode != 0:
            return first.returncode

        banner(f"files under {work}")
        before = snapshot(work, skip=("acmebot.json",))
        print(f"  {'mode':>4}  {'size':>6}  path")
        for path, (mode, size, _, _) in before.items():
            print(f"  {mode:04o}  {size:>6}  {path.relative_to(work)}")

        banner("the certificates")
        certs = sorted((work / "certs").glob("*.pem"))
        leaves = [p for p in certs if "_chain" not in p.name and "+root" not in p.name]
        if not leaves:
            print("demo: acmebot wrote no certificate", file=sys.stderr)
            return 1
        for path in leaves:
            describe_certificate(path)

        second = run_step(config, "second", "--verbose", " (everything is in place: nothing to do)")
        if second.returncode != 0:
            return second.returncode
        after = snapshot(work, skip=("acmebot.json",))
        # The log file grows on every run; the resource dir may record authorizations.
        changed = [p for p in set(before) | set(after)
                   if before.get(p) != after.get(p) and p.parent.name not in ("log", "resource", "run")]
        if changed:
            print("demo: the second run changed files: "
                  + ", ".join(str(p.relative_to(work)) for p in sorted(changed)), file=sys.stderr)
            return 1
        print("  no certificate or key file was touched")
        banner("stopping the lab")
    print("done: every server is stopped; the temporary directory is removed next")
    return 0


def run_step(config, which, option, note):
    """One acmebot run, shown; a failure is said on stderr."""
    banner(f"{which} run: acmebot {option}{note}")
    result = run_acmebot(config, option)
    show_run(result)
    if result.returncode != 0:
        print(f"demo: the {which} acmebot run failed", file=sys.stderr)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (its path is printed)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("demo: must run as root (it creates a network namespace): sudo ./demo", file=sys.stderr)
        return 3
    missing = [name for name in REQUIRED_BINARIES if shutil.which(name) is None]
    if missing:
        print(f"demo: required program(s) not found: {', '.join(missing)} "
              "(./demo installs them: tests/install-deps)", file=sys.stderr)
        return 3
    error = isolate_network()
    if error:
        print(f"demo: cannot isolate the demo on loopback: {error}", file=sys.stderr)
        return 3
    os.environ["ACMEBOT_TEST_NETNS"] = "1"
    # SIGTERM/SIGHUP unwind like Ctrl-C, so the lab's servers are stopped by their PIDs.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: sys.exit(130))
    root = Path(tempfile.mkdtemp(prefix="acmebot-demo-"))
    try:
        return demo(root)
    except LabError as error:
        print(f"demo: the lab did not start: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"demo: kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
