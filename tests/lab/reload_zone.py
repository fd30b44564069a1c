#!/usr/bin/env python3
"""The test lab's "local DNS" reload_zone_command for acmebot.

    reload_zone.py --challenge-dir DIR --server 127.0.0.1 --port P --key-file F ZONE

acmebot writes DIR/ZONE, a JSON object {"<domain>": "<value>" or ["<v1>", ...]}, and then
runs this command with the zone name appended.  A domain "*.base" stands for "base"
(the wildcard's challenge lives at _acme-challenge.base).  This script makes the zone's
_acme-challenge TXT records exactly `_acme-challenge.<domain>` with those values (TTL 300),
in one TSIG-signed RFC 2136 update; without DIR/ZONE it removes them all.  The records
present now are found by AXFR (the lab allows it for the key in F).

Exit 0 on success; otherwise 1 with a one-line message on stderr.
"""

import argparse
import json
import os
import re
import sys

import dns.exception
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.update
import dns.zone

TTL = 300
LABEL = "_acme-challenge"


class Failure(Exception):
    pass


def read_key(path):
    """The first key of a tsig-keygen-form file (`key "n" { algorithm a; secret "s"; };`)."""
    try:
        text = open(path).read()
    except OSError as error:
        raise Failure(f"cannot read key file {path}: {error.strerror}")
    # comments outside quoted strings only: a base64 secret may contain "//"
    text = re.sub(r'("(?:[^"\\]|\\.)*")|/\*.*?\*/|//[^\n]*|#[^\n]*', lambda m: m.group(1) or "", text, flags=re.S)
    match = re.search(r'key\s+"?([^"\s{]+)"?\s*\{(.*?)\}\s*;', text, re.S)
    algorithm = match and re.search(r"algorithm\s+\"?([\w.-]+)\"?\s*;", match.group(2))
    secret = match and re.search(r'secret\s+"([^"]+)"\s*;', match.group(2))
    if not (algorithm and secret):
        raise Failure(f"no key with algorithm and secret in {path}")
    return dns.tsig.Key(match.group(1), secret.group(1), algorithm.group(1))


def wanted_records(challenge_file, zone):
    """{record name: [values]} from the challenge file; {} if it does not exist."""
    try:
        with open(challenge_file) as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise Failure(f"cannot read {challenge_file}: {error}")
    if not isinstance(data, dict):
        raise Failure(f"{challenge_file}: expected a JSON object, got {type(data).__name__}")
    records = {}
    for domain, values in data.items():
        if isinstance(values, str):
            values = [values]
        if not (isinstance(values, list) and values and all(isinstance(v, str) for v in values)):
            raise Failure(f"{challenge_file}: {domain!r}: expected a string or a list of strings")
        base = domain[2:] if domain.startswith("*.") else domain
        try:
            name = dns.name.from_text(f"{LABEL}.{base.rstrip('.')}")
        except dns.exception.DNSException as error:
            raise Failure(f"{challenge_file}: bad domain name {domain!r}: {error}")
        if not name.is_subdomain(zone):
            raise Failure(f"{challenge_file}: {domain!r} is not in zone {zone}")
        bucket = records.setdefault(name, [])
        bucket.extend(v for v in values if v not in bucket)
    return records


def current_records(zone, server, port, key):
    """Names of the _acme-challenge TXT rrsets in the zone now (by AXFR)."""
    try:
        xfr = dns.zone.from_xfr(dns.query.xfr(server, zone, port=port, keyring=key,
                                              keyname=key.name, lifetime=30, relativize=False),
                                  relativize=False)
    except (dns.exception.DNSException, OSError) as error:
        raise Failure(f"AXFR of {zone} from {server}:{port} failed: {error or type(error).__name__}")
    return {name for name, node in xfr.nodes.items()
            if name.labels and name.labels[0].lower() == LABEL.encode()
            and node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.TXT) is not None}


def quote_txt(value):
    """TXT rdata text for one string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--challenge-dir", required=True)
    parser.add_argument("--server", required=True)
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--key-file", required=True)
    parser.add_argument("zone")
    args = parser.parse_args(argv)
    try:
        zone_text = args.zone.rstrip(".")
        if not zone_text or "/" in zone_text:
            raise Failure(f"bad zone name {args.zone!r}")
        zone = dns.name.from_text(zone_text)
        key = read_key(args.key_file)
        wanted = wanted_records(os.path.join(args.challenge_dir, zone_text), zone)
        present = current_records(zone, args.server, args.port, key)
        if not wanted and not present:
            return 0
        update = dns.update.UpdateMessage(zone, keyring=key)
        for name in sorted(present - set(wanted)):
            update.delete(name, "TXT")
        for name, values in sorted(wanted.items()):
            update.replace(name, TTL, "TXT", *(quote_txt(v) for v in values))
        try:
            response = dns.query.tcp(update, args.server, port=args.port, timeout=30)
        except (dns.exception.DNSException, OSError) as error:
            raise Failure(f"update of {zone_text} at {args.server}:{args.port} failed: "
                          f"{error or type(error).__name__}")
        if response.rcode() != dns.rcode.NOERROR:
            raise Failure(f"update of {zone_text} refused: {dns.rcode.to_text(response.rcode())}")
    except Failure as error:
        print(f"reload_zone.py: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
