"""Every config value is answered when the config is loaded.

1. A table of values that once passed the check and failed later (a traceback,
   exit 1, or a late error after files were touched), each driven through the
   real CLI: exit 2, one ERROR line naming the config path, nothing on disk.
2. A seeded config fuzzer: a rich valid config, mutated (type swaps, huge,
   negative and non-finite numbers, 5,000-digit integers, control characters,
   path and format-string tricks, deep nesting, lists for objects and back),
   run in process through acmebot.main().  Each case either exits 2 with every
   line naming its place in the config, or is accepted and runs on without a
   traceback and without exit 1, and then shows --status: the CA URL is a
   loopback port where nothing listens and the resolver is the lab's BIND,
   which refuses the fuzz zones at once, so an accepted run plans its work and
   stops with exit 3 or 4 in a fraction of a second.

ACMEBOT_FUZZ_CASES=20000 runs more cases, ACMEBOT_FUZZ_SEED=N another series;
a failure prints the seed of its case (ACMEBOT_FUZZ_ONLY=<seed> runs that one).
"""

import base64
import contextlib
import copy
import io
import json
import os
import random
import re
import shutil
import time
from pathlib import Path

import pytest

from conftest import run_acmebot
from lab import free_port
from test_failures import _config_with, _set, assert_config_error
from test_units import GROUP, USER, ab  # acmebot imported in process once


# -- 1. values that used to fail late, through the CLI --------------------------------------

def _cert(**options):
    return _set(["certificates", "cfg.example.test"], options)


def _tlsa(**entry):
    return _cert(tlsa_records={"example.test": [dict({"host": "@"}, **entry)]})


def _top(key, value):
    return _set([key], value)


def _named_cert(name):
    def mutate(config):
        config["certificates"] = {name: {}}
    return mutate


LATE_FAILURES = {
    "ip_addresses_not_a_list": (_cert(ip_addresses=5), ["certificates.cfg.example.test.ip_addresses", "got 5"]),
    "renewal_days_huge": (_set(["settings", "renewal_days"], 10 ** 12),
                          ["settings.renewal_days: must be an integer from 0 to 3650", "1000000000000"]),
    "run_interval_hours_1e300": (_set(["settings", "run_interval_hours"], 1e300),
                                 ["settings.run_interval_hours: must be a number from 0 to", "1e+300"]),
    "dns_port_70000": (_set(["settings", "dns_port"], 70000),
                       ["settings.dns_port: must be an integer from 1 to 65535, got 70000"]),
    "dns_resolver_port_not_a_number": (_set(["settings", "dns_resolvers"], ["1.2.3.4:abc"]),
                                       ["settings.dns_resolvers[0]", "'1.2.3.4:abc'"]),
    "dns_resolver_host_name": (_set(["settings", "dns_resolvers"], ["ns.example.test"]),
                               ["settings.dns_resolvers[0]", "IP address"]),
    "tlsa_port_true": (_tlsa(port=True), ["tlsa_records.example.test[0].port", "got true"]),
    "tlsa_host_not_a_name": (_tlsa(host="bad host!"), ["tlsa_records.example.test[0].host", "not a valid host name"]),
    "tlsa_ttl_huge": (_tlsa(ttl=2 ** 40), ["tlsa_records.example.test[0].ttl", "from 0 to"]),
    "tlsa_usage_a_list": (_tlsa(usage=["pkix-ee"]), ["tlsa_records.example.test[0].usage", "must be one of"]),
    "ip_address_as_dns_name": (_cert(alt_names={"example.test": ["cfg", "10.0.0.1."]}),
                               ["alt_names.example.test[1]", "'10.0.0.1' is an IP address"]),
    "ip_address_as_certificate_name": (_named_cert("10.0.0.1"),
                                       ["certificates.10.0.0.1.common_name", "is an IP address"]),
    "all_numeric_tld": (_named_cert("cfg.123"), ["certificates.cfg.123.common_name", "all digits"]),
    "name_starting_with_dash": (_named_cert("-cfg.example.test"),
                                ["certificates.-cfg.example.test.common_name", "not a valid host name"]),
    "format_spec_in_directory": (_set(["directories", "certificate"], "certs/{name:>999999}"),
                                 ["directories.certificate", "format specifications are not allowed"]),
    "format_spec_in_file_name": (_set(["file_names", "certificate"], "{name:>99999}.pem"),
                                 ["file_names.certificate", "format specifications are not allowed"]),
    "conversion_in_hook": (_set(["hooks", "notify"], "echo {problem!r}"),
                           ["hooks.notify", "conversions are not allowed"]),
    "conversion_in_hpkp_header": (_set(["hpkp_headers", "nginx"], "add_header X {header!s};"),
                                  ["hpkp_headers.nginx", "conversions are not allowed"]),
    "format_spec_in_http_challenge": (_set(["directories", "http_challenge"], "/srv/{host:^300}"),
                                      ["directories.http_challenge", "format specifications"]),
    "positional_field": (_set(["file_names", "chain"], "{0}.pem"), ["file_names.chain", "not a plain field name"]),
    "file_name_dot_dot": (_set(["file_names", "param"], ".."), ["file_names.param", "must be a file name"]),
    "file_name_can_be_empty": (_set(["file_names", "private_key"], "{suffix}"),
                               ["file_names.private_key", "can expand to nothing"]),
    "log_file_name_with_a_field": (_set(["file_names", "log"], "{name}.log"),
                                   ["file_names.log", "unknown field {name}"]),
    "certificate_written_over_its_key": (
        lambda config: (config["directories"].update(certificate=config["directories"]["private_key"]),
                        config.setdefault("file_names", {}).update(certificate="{name}{suffix}.key"),
                        config["certificates"]["cfg.example.test"].update(key_types=["rsa"])),
        ["certificates.cfg.example.test: the certificate file of cfg.example.test (rsa)",
         "also the private_key file of cfg.example.test (rsa)"]),
    "one_key_file_for_every_key": (
        lambda config: (config.setdefault("file_names", {}).update(private_key="key{suffix}.pem"),
                        config["certificates"].update({"zz.example.test": {"key_types": ["rsa"]}})),
        ["certificates.zz.example.test: the private_key file of zz.example.test (rsa)",
         "also the private_key file of cfg.example.test (rsa)"]),
    "lock_directory_with_a_field": (_set(["directories", "pid"], "run/{name}"),
                                    ["directories.pid", "unknown field {name}"]),
    "key_cipher_with_spaces": (_set(["settings", "key_cipher"], "aes 256; rm"), ["settings.key_cipher"]),
    "acme_url_with_space": (_set(["settings", "acme_directory_url"], "https://127.0.0.1/a b"),
                            ["settings.acme_directory_url", "must be an http"]),
    "acme_url_bad_port": (_set(["settings", "acme_directory_url"], "https://127.0.0.1:99999/dir"),
                          ["settings.acme_directory_url"]),
    "acme_ca_bundle_missing": (_set(["settings", "acme_ca_bundle"], "/nonexistent/ca.pem"),
                               ["settings.acme_ca_bundle", "no such file"]),
    "file_user_not_a_string": (_set(["settings", "file_user"], 0), ["settings.file_user", "got 0"]),
    "zone_update_key_server": (_set(["zone_update_keys", "example.test", "server"], "bad host!"),
                               ["zone_update_keys.example.test.server", "not a valid host name"]),
    "zone_update_key_port_true": (_set(["zone_update_keys", "example.test", "port"], True),
                                  ["zone_update_keys.example.test.port", "got true"]),
    "verify_host_not_a_name": (_set(["settings", "verify"], [{"port": 443, "hosts": ["a b"]}]),
                               ["settings.verify[0].hosts[0]", "not a valid host name"]),
    "ct_log_date_not_a_string": (_top("ct_logs", {"x": {"url": "https://ct.example.test/", "start": 20270101}}),
                                 ["ct_logs.x.start", "must be a date"]),
    "ct_log_url_with_space": (_top("ct_logs", {"x": {"url": "https://ct.example.test/a b"}}), ["ct_logs.x.url"]),
    "ct_log_key_not_a_key": (_top("ct_logs", {"x": {"url": "https://ct.example.test/", "key": "AAAA"}}),
                             ["ct_logs.x.key", "public key"]),
    "hpkp_header_name": (_top("hpkp_headers", {"a b": "{header}"}), ["hpkp_headers.a b", "file names"]),
    "service_not_a_string": (_top("services", {"nginx": 5}), ["services.nginx", "got 5"]),
    "challenge_alias_not_a_string": (_top("challenge_aliases", {"cfg.example.test": 5}),
                                     ["challenge_aliases.cfg.example.test", "got 5"]),
    "eab_hmac_key_not_a_string": (_top("account", {"email": "a@example.test", "eab_kid": "k", "eab_hmac_key": 5}),
                                  ["account.eab_hmac_key"]),
    "eab_hmac_key_not_whole_bytes": (_top("account", {"email": "a@example.test", "eab_kid": "k",
                                                      "eab_hmac_key": "abcde"}), ["account.eab_hmac_key"]),
    "max_workers_huge": (_set(["settings", "max_workers"], 10 ** 9), ["settings.max_workers", "from 1 to"]),
    "lock_timeout_negative": (_set(["settings", "lock_timeout"], -1), ["settings.lock_timeout", "got -1"]),
    "lock_timeout_huge": (_set(["settings", "lock_timeout"], 1e300), ["settings.lock_timeout"]),
    "min_run_delay_huge": (_set(["settings", "min_run_delay"], 10 ** 7), ["settings.min_run_delay", "from 0 to"]),
    "reload_zone_command_unbalanced_quote": (_set(["settings", "reload_zone_command"], "reload 'zone"),
                                             ["settings.reload_zone_command", "cannot be split"]),
    "nul_in_directory": (_set(["directories", "log"], "log\0x"), ["directories.log", "NUL"]),
    "lone_surrogate_in_email": (_set(["account", "email"], "a\ud800@example.test"), ["account.email", "surrogate"]),
    "newline_in_a_name_stays_one_line": (_top("hpkp_headers", {"a\nb": "{header}"}), ["hpkp_headers.a\\nb"]),
}

# Values json.dumps cannot write: the config text is edited after dumping.
_MARK = '"__REPLACE_ME__"'
RAW_LATE_FAILURES = {
    "run_interval_hours_infinity": ("Infinity", ["settings.run_interval_hours", "got Infinity"]),
    "run_interval_hours_nan": ("NaN", ["settings.run_interval_hours", "got NaN"]),
    "run_interval_hours_5000_digits": ("9" * 5000, ["settings.run_interval_hours", "got Infinity"]),
    "nested_100000_deep": ("[" * 100000 + "]" * 100000, ["column", "nested more than 20 deep"]),
    "duplicate_key": ('{"a": 1, "a": 2}', ["settings.run_interval_hours.a: is given twice"]),
}


def _run_late_failure(tmp_path, lab, mutate, text_edit=None):
    config = _config_with(tmp_path, lab, mutate)
    text = json.dumps(config, indent=2)
    if text_edit:
        text = text_edit(text)
    (tmp_path / "acmebot.json").write_bytes(text.encode("utf-8", "surrogatepass"))
    return run_acmebot(tmp_path / "acmebot.json")


@pytest.mark.parametrize("case", sorted(LATE_FAILURES))
def test_late_failure_is_refused_at_load(lab, tmp_path, case):
    """Through the CLI, with the checks of test_failures.assert_config_error."""
    mutate, needles = LATE_FAILURES[case]
    assert_config_error(tmp_path, _run_late_failure(tmp_path, lab, mutate), [needles])


@pytest.mark.parametrize("case", sorted(RAW_LATE_FAILURES))
def test_late_failure_in_the_json_text_is_refused_at_load(lab, tmp_path, case):
    value, needles = RAW_LATE_FAILURES[case]
    result = _run_late_failure(tmp_path, lab, _set(["settings", "run_interval_hours"], "__REPLACE_ME__"),
                               lambda text: text.replace(_MARK, value))
    assert_config_error(tmp_path, result, [needles])


def test_invalid_utf8_is_one_line(lab, tmp_path):
    text = json.dumps(_config_with(tmp_path, lab, _set(["account", "email"], "__REPLACE_ME__")), indent=2)
    data = text.replace(_MARK, '"a\udcff@example.test"').encode("utf-8", "surrogateescape")
    (tmp_path / "acmebot.json").write_bytes(data)
    line = data.decode("latin-1")[:data.index(b"\xff")].count("\n") + 1
    result = run_acmebot(tmp_path / "acmebot.json")
    assert_config_error(tmp_path, result, [[f"line {line} column", "not valid UTF-8", "0xff"]])


# -- 2. the fuzzer --------------------------------------------------------------------------

FUZZ_CASES = int(os.environ.get("ACMEBOT_FUZZ_CASES", "1000"))
FUZZ_SEED = int(os.environ.get("ACMEBOT_FUZZ_SEED", "20261130"))
FUZZ_ONLY = os.environ.get("ACMEBOT_FUZZ_ONLY")
FUZZ_KEEP_GOING = os.environ.get("ACMEBOT_FUZZ_KEEP_GOING") == "1"   # for long runs: every failing seed
TOP_LEVEL = ("config", "account", "settings", "directories", "services", "certificates", "private_keys",
             "authorizations", "http_challenges", "zone_update_keys", "key_type_suffixes", "file_names",
             "hpkp_headers", "ct_logs", "hooks", "verify", "challenge_aliases", "dns_providers")
PATHY = ("directories", "http_challenges")     # absolute values there stay inside the case's directory


def fuzz_base_config(case_dir, ca_port, dns_port):
    """A valid config that uses every section, so that mutations reach every check.
    Its zones are not the lab's: the lab's BIND answers REFUSED at once for them
    (a resolver port where nothing listens would make every lookup wait for its
    timeout), and no UPDATE can reach a zone of the lab."""
    d = str(case_dir)
    return {
        "account": {"email": "admin@example.fuzz", "eab_kid": "kid-1",
                    "eab_hmac_key": "c2VjcmV0LWhtYWMta2V5LWZvci10ZXN0cw", "eab_algorithm": "HS256"},
        "settings": {
            "acme_directory_url": f"http://127.0.0.1:{ca_port}/dir", "acme_timeout": 5,
            "dns_resolvers": [f"127.0.0.1:{dns_port}"], "dns_port": dns_port, "dns_timeout": 0.5,
            "key_size": 2048, "key_curve": "secp256r1", "key_cipher": "aes256", "key_passphrase": False,
            "file_user": USER, "file_group": GROUP, "log_level": "debug", "color_output": False,
            "renewal_days": 30, "expiration_days": 730, "hpkp_days": 60, "run_interval_hours": 24,
            "max_workers": 4, "lock_timeout": 5, "min_run_delay": 0, "max_run_delay": 10,
            "max_dns_lookup_attempts": 2, "dns_lookup_delay": 0.1, "max_authorization_attempts": 2,
            "authorization_delay": 0.1, "cert_poll_time": 1, "max_ocsp_verify_attempts": 1,
            "ocsp_verify_retry_delay": 0, "expiry_notice_days": 7, "max_pending_authorizations": 10,
            "max_domains_per_order": 100, "reload_zone_command": "true", "nsupdate_command": None,
            "ct_submit_logs": ["fuzz_log"], "ocsp_responder_urls": [f"http://127.0.0.1:{ca_port}/ocsp"],
            "hpkp_report_uri": None, "profile": None, "preferred_chain": None, "dhparam_size": 2048,
            "ecparam_curve": "secp256r1", "ocsp_must_staple": False, "auto_rollover": False,
            "verify": [{"port": 443, "hosts": ["www.example.fuzz"], "key_types": ["ecdsa"]}],
        },
        "directories": {
            "pid": f"{d}/run", "log": "log", "resource": f"{d}/resource", "private_key": f"{d}/private",
            "backup_key": f"{d}/private", "previous_key": None, "full_key": f"{d}/private",
            "certificate": f"{d}/certs/{{name}}", "full_certificate": f"{d}/certs", "chain": f"{d}/certs",
            "param": f"{d}/params", "challenge": f"{d}/challenge", "http_challenge": f"{d}/http/{{fqdn}}",
            "hpkp": f"{d}/hpkp", "sct": f"{d}/scts/{{name}}/{{key_type}}", "ocsp": f"{d}/ocsp",
            "update_key": f"{d}/keys", "archive": f"{d}/archive", "temp": f"{d}/tmp",
        },
        "file_names": {"certificate": "{name}{suffix}.pem", "chain": "{name}_chain{suffix}.pem",
                       "sct": "{ct_log_name}.sct", "log": "acmebot.log"},
        "key_type_suffixes": {"rsa": ".rsa", "ecdsa": ".ecdsa"},
        "hpkp_headers": {"nginx": 'add_header Public-Key-Pins "{header}" always;\n'},
        "ct_logs": {"fuzz_log": [{"url": f"http://127.0.0.1:{ca_port}/ct/", "start": "2020-01-01T00:00:00Z",
                                  "end": "2040-01-01T00:00:00Z"}]},
        "hooks": {"notify": "true {certificate_name} {problem}", "certificate_installed": "true {certificate_file}"},
        "services": {"web": "true"},
        "zone_update_keys": {"example.fuzz": {"file": f"{d}/keys/example.fuzz.key", "server": "127.0.0.1",
                                              "port": dns_port}},
        "challenge_aliases": {"alias.example.fuzz": "challenges.example.fuzznet"},
        "http_challenges": {"http.example.fuzz": f"{d}/http-one", "10.0.0.5": f"{d}/http-ip"},
        "authorizations": {"example.fuzz": ["auth"]},
        "certificates": {
            "web.example.fuzz": {
                "alt_names": {"example.fuzz": ["web", "www", "*"]},
                "services": ["web"], "key_types": ["rsa", "ecdsa"],
                "tlsa_records": {"example.fuzz": [{"host": "web", "port": 443, "usage": "dane-ee",
                                                   "selector": "spki", "ttl": 300}, "www"]},
                "verify": [443, {"port": 25, "starttls": "smtp"}],
            },
            "ip.example.fuzz": {"ip_addresses": ["10.0.0.5", "::1"], "ct_submit_logs": []},
        },
        "private_keys": {
            "shared": {"key_passphrase": "fuzz passphrase", "expiration_days": 365,
                       "certificates": {"mail.example.fuzz": {"alt_names": {"example.fuzz": ["mail", "alias"]},
                                                              "dhparam_size": 3072}}},
        },
    }


BIG_INT = "__BIG_INT__"
SCALARS = [None, True, False, 0, 1, -1, 2, 65536, 70000, 2 ** 31, 10 ** 12, 10 ** 30, -10 ** 12, 0.5, -0.001,
           1e300, -1e300, 1e-300, float("nan"), float("inf"), float("-inf"), BIG_INT]
STRINGS = ["", " ", "x", "a" * 64, "a" * 5000, "é", "例え.テスト", "\u202e", "\U0001f600", "\n", "a\nb", "\t",
           "\r", "\x1b[31m", "\x7f", "\0", "a\0b", "\ud800", "\udcff", "  padded  ",
           "../", "../../x", "x/../../..", "/", "//", ".", "..", "./.", "~", "a/b", "a\\b",
           "{name!r}", "{name:>99999}", "{0}", "{}", "{__class__}", "{name.__class__}", "{name[0]}",
           "{", "}", "{{name}}", "{name}{name}", "{problem!s}", "%s%n", "$(true)", "`true`", "'", '"',
           "10.0.0.1", "::1", "fe80::1%eth0", "1.2.3.4:abc", "[::1]:99999", "[::1]:", "127.0.0.1:0",
           "-bad.example.fuzz", "a..b", "*.example.fuzz", "*", "x.123", "123", ("a" * 64) + ".test",
           "xn--zz.test", "EXAMPLE.TEST.", "http://", "https://127.0.0.1:99999/", "http://a b/",
           "https://127.0.0.1/dir", "ftp://x", "mailto:a@b", "2027-01-01", "2027-01-01T00:00:00",
           "2027-13-45", "true", "null", "NaN", "1e300", "rsa", "ecdsa", "dsa", "secp256r1", "aes256",
           "root", "nobody", "no-such-user", "pkix-ee", "cert", "udp", "smtp", "http", "HS512", "debug"]


def _paths(node, prefix=()):
    """Every place in the tree: (path, is_key) for values, list items and object keys."""
    yield prefix, False
    if isinstance(node, dict):
        for key, value in node.items():
            yield prefix + (key,), True
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, prefix + (i,))


def _random_value(rng, current, config):
    kind = rng.randrange(11)
    if kind >= 9:                                  # a value of the right shape from elsewhere in the config
        path, _ = rng.choice([p for p in _paths(config) if p[0]])
        donor = config
        for step in path:
            donor = donor[step]
        return copy.deepcopy(donor)
    if kind == 0:
        return rng.choice(SCALARS)
    if kind in (1, 2):
        return rng.choice(STRINGS)
    if kind == 3:                                  # a list where an object or a scalar was, and back
        return [current] if not isinstance(current, list) else (current[0] if current else {})
    if kind == 4:
        return {rng.choice(STRINGS[:12] + ["port", "host", "url", "file"]): current}
    if kind == 5:                                  # deep nesting: within the limit, or past it
        value = current
        for _ in range(rng.choice((3, 8, 19, 25, 60))):
            value = [value] if rng.random() < 0.5 else {"a": value}
        return value
    if kind == 6:
        return rng.choice(([], {}, [None], [""], [[]], [{}], {"": None}))
    if isinstance(current, (int, float)) and not isinstance(current, bool):
        return rng.choice((current * 10 ** rng.randrange(1, 12), -current, current + 0.5, 0, 1,
                           current * 2, current // 2, float(current)))
    if isinstance(current, str):
        return current + rng.choice(STRINGS) if rng.random() < 0.5 else rng.choice(STRINGS) + current
    return rng.choice(SCALARS)


def mutate(config, rng, case_dir):
    """1-3 mutations at random places; returns a description of each."""
    done = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        places = [p for p in _paths(config) if p[0]]
        path, is_key = rng.choice(places)
        parent = config
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        if rng.random() < 0.15 and isinstance(parent, dict):
            del parent[last]
            done.append(f"delete {'.'.join(map(str, path))}")
            continue
        if is_key:
            new_key = rng.choice(STRINGS + ["key_sise", "alt_name", "port", "url", "10.0.0.1", "-x.test"])
            parent[new_key] = parent.pop(last)
            done.append(f"rename {'.'.join(map(str, path))} -> {new_key!r}")
            continue
        value = _random_value(rng, parent[last], config)
        if path[0] in PATHY and isinstance(value, str) and value.startswith("/"):
            value = str(case_dir) + value                # never a real system directory
        parent[last] = value
        done.append(f"set {'.'.join(map(str, path))} = {value!r:.80}")
    return done


def _dump(config):
    text = json.dumps(config, indent=1, allow_nan=True)
    return text.replace(json.dumps(BIG_INT), "7" * 5000)


def run_in_process(config_path, *args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = ab.main(["--config", str(config_path), "--accept-terms", "--no-color", *args])   # closes its log file
    return code, out.getvalue(), err.getvalue()


_PLACE = re.compile(r"^(?:line \d+ column \d+|(?:%s|\*{8})(?=[.\[:]))" % "|".join(TOP_LEVEL))


def check_case(config_path, seed, what):
    """The outcome of one case: a refusal naming places, or a run without a bug."""
    code, out, err = run_in_process(config_path)
    context = f"seed {seed} ({'; '.join(what)}): exit {code}\nstdout: {out[-2000:]}\nstderr: {err[-2000:]}"
    assert code != 1, context
    for stream in (out, err):
        assert "Traceback" not in stream and "internal error" not in stream, context
    if code == 2:
        lines = err.splitlines()
        assert lines and out == "", context
        # a secret is starred out even where it matches other text (an EAB key "a/b" in the path)
        prefix = ab.REDACTOR.redact(f"ERROR: {config_path}: ")
        for line in lines:
            assert line.startswith(prefix) and _PLACE.match(line[len(prefix):]), (line, context)
        return "refused"
    status, status_out, status_err = run_in_process(config_path, "--status")
    assert status == 0 and "Traceback" not in status_out + status_err, (
        f"seed {seed}: --status exit {status}\n{status_out[-2000:]}{status_err[-2000:]}\n{context}")
    return "accepted"


DEFAULT_DIRECTORIES = dict(ab.DEFAULT_DIRECTORIES)


def write_fuzz_key(case_dir):
    """The base config's TSIG key (its route is checked before a run contacts the CA)."""
    keys = Path(case_dir) / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    secret = base64.b64encode(b"fuzz tsig secret, 32 bytes long!").decode()
    (keys / "example.fuzz.key").write_text(
        f'key "update.example.fuzz" {{ algorithm hmac-sha256; secret "{secret}"; }};\n')


def test_config_fuzz(lab, tmp_path, monkeypatch):
    """FUZZ_CASES mutated configs, each must be refused with places named or run cleanly."""
    monkeypatch.setenv("ACMEBOT_PASSPHRASE", "fuzz passphrase")
    ca_port = free_port()                  # nothing listens there
    seeds = [int(FUZZ_ONLY)] if FUZZ_ONLY else range(FUZZ_SEED, FUZZ_SEED + FUZZ_CASES)
    counts = {"refused": 0, "accepted": 0}
    failed = []
    started = time.monotonic()
    for seed in seeds:
        case_dir = tmp_path / "case"
        conf_dir = case_dir / "a" / "b" / "c" / "conf"    # '../' tricks stay inside case_dir
        conf_dir.mkdir(parents=True)
        # a fresh process has no secrets registered yet: a passphrase of an earlier case ("cert")
        # would be starred out of this case's messages
        monkeypatch.setattr(ab, "REDACTOR", ab.Redactor())
        # a mutation that deletes a directory brings back its default (/var/local/acmebot,
        # /etc/ssl/...): the defaults of this process point into the case's directory
        monkeypatch.setattr(ab, "DEFAULT_DIRECTORIES", {
            kind: None if value is None else str(case_dir / "defaults") + value
            for kind, value in DEFAULT_DIRECTORIES.items()})
        rng = random.Random(seed)
        write_fuzz_key(case_dir)
        config = fuzz_base_config(case_dir, ca_port, lab.dns_port)
        what = mutate(config, rng, case_dir)
        config_path = conf_dir / "acmebot.json"
        config_path.write_bytes(_dump(config).encode("utf-8", "surrogatepass"))
        try:
            counts[check_case(config_path, seed, what)] += 1
        except AssertionError as error:
            if not FUZZ_KEEP_GOING:
                raise
            failed.append(seed)
            print(f"FAILED {str(error)[:3000]}")
        shutil.rmtree(case_dir)
    print(f"config fuzz: {len(seeds)} cases from seed {seeds[0]}: {counts['refused']} refused, "
          f"{counts['accepted']} accepted, {len(failed)} failed, {time.monotonic() - started:.1f} s")
    assert not failed, f"failing seeds: {failed}"
    assert counts["refused"] and (counts["accepted"] or FUZZ_ONLY), counts


def test_unmutated_fuzz_config_is_accepted_and_runs(lab, tmp_path, monkeypatch):
    """The fuzzer's starting point is valid: without it every mutation would be refused for nothing."""
    monkeypatch.setenv("ACMEBOT_PASSPHRASE", "fuzz passphrase")
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    config_path = conf_dir / "acmebot.json"
    write_fuzz_key(tmp_path)
    config_path.write_text(_dump(fuzz_base_config(tmp_path, free_port(), lab.dns_port)))
    code, out, err = run_in_process(config_path)
    assert code in (3, 4), out + err        # the CA cannot be reached; the TLSA lookups are refused
    assert "cannot reach the CA" in err
    assert check_case(config_path, "base", ["none"]) == "accepted"
