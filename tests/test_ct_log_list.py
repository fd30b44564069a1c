"""CT logs from a browser log list (settings.ct_log_list: Chrome's log_list.json v3), as a
file and served over HTTP on loopback, pointing at the loopback CT logs of ocsp_ct.py.

The lists are written here in the published format (operators[].logs[] for RFC 6962
logs, operators[].tiled_logs[] for static-ct-api logs, each with description, log_id,
key, url or submission_url, mmd, state and temporal_interval).  The test logs' shards:

    Loopback Logs 'Tern2000'     log1, RFC 6962, [2000, 2001): holds no certificate of today
    Loopback Logs 'Tern2026h2'   log2, tiled,    [2001, 2200): holds every certificate
    Loopback Logs 'Heron2026'    a key of no server, at log1's URL, retired

so `loopback_logs_tern` must reach log2 only, and `loopback_logs_heron` nobody.
"""

import base64
import hashlib
import json
import os
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import make_config, run_acmebot
from lab.ocsp_ct import LoopbackServer, ct_log  # noqa: F401 (fixture)
from test_issue import assert_clean, assert_ok
from test_sct_ocsp import assert_warned_ok, chain_of, check_sct, der, host_cert, sct_file, submissions_of
from test_units import GROUP, USER, ab

TERN, HERON = "loopback_logs_tern", "loopback_logs_heron"


@pytest.fixture(autouse=True)
def fresh_logs(ct_log):
    """The CT logs are session-wide: each test starts from (and leaves) them normal and empty."""
    ct_log.reset()
    yield
    ct_log.reset()


# -- a log list in the published format -------------------------------------------------------------

def stranger_key():
    """(key, log_id) in base64 of a log no server answers for."""
    spki = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(spki).decode(), base64.b64encode(hashlib.sha256(spki).digest()).decode()


def entry(description, key, log_id, url, start=None, end=None, state="usable", tiled=False):
    log = {"description": description, "log_id": log_id, "key": key, "mmd": 60 if tiled else 86400,
           "state": {state: {"timestamp": "2025-06-01T00:00:00Z"}}}
    if tiled:
        log.update(submission_url=url, monitoring_url=url + "monitoring/")
    else:
        log["url"] = url
    if start:
        log["temporal_interval"] = {"start_inclusive": start, "end_exclusive": end}
    return log


def log_list(logs=(), tiled_logs=()):
    return {"version": "61.3", "log_list_timestamp": "2026-11-30T00:00:00Z",
            "operators": [{"name": "Loopback Logs", "email": ["ct@example.test"],
                           "logs": list(logs), "tiled_logs": list(tiled_logs)}]}


def tern_2000(ct_log):
    log1 = ct_log.logs["log1"]
    return entry("Loopback Logs 'Tern2000'", log1.key_b64, log1.log_id_b64, log1.url,
                 "2000-01-01T00:00:00Z", "2001-01-01T00:00:00Z")


def tern_now(ct_log):
    log2 = ct_log.logs["log2"]
    return entry("Loopback Logs 'Tern2026h2'", log2.key_b64, log2.log_id_b64, log2.url,
                 "2001-01-01T00:00:00Z", "2200-01-01T00:00:00Z", tiled=True)


def heron(ct_log):
    key, log_id = stranger_key()
    return entry("Loopback Logs 'Heron2026'", key, log_id, ct_log.logs["log1"].url, state="retired")


def full_list(ct_log):
    return log_list([tern_2000(ct_log), heron(ct_log)], [tern_now(ct_log)])


def write_list(tmp_path, data, name="ct-logs.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=2))
    return path


def list_config(tmp_path, lab, host, name, ct_log_list, logs=(TERN,)):
    return make_config(tmp_path, lab, {
        "settings": {"ct_log_list": ct_log_list, "ct_submit_logs": list(logs)},
        "certificates": {name: {"alt_names": {"example.test": [host]}, "key_types": ["ecdsa"]}},
    })


def leaf_of(tmp_path, name):
    return chain_of(tmp_path, name, "ecdsa")[0]


class ListServer(LoopbackServer):
    """Serves one log list at /log_list.json on 127.0.0.1 ("down": connection refused)."""
    MODES = ("normal", "down")
    KIND = "log list server"

    def __init__(self, data):
        self.mode = "normal"
        self.body = json.dumps(data).encode()
        super().__init__()
        self.url = f"http://127.0.0.1:{self.port}/log_list.json"

    def handle(self, method, path, headers, body):
        with self._lock:
            self.requests += 1
        if method == "GET" and path == "/log_list.json":
            return 200, "application/json", self.body
        return 404, "text/plain", b"not found\n"


@pytest.fixture
def list_server(ct_log):
    server = ListServer(full_list(ct_log))
    yield server
    server.stop()


# -- a real run submits to the log the list names ------------------------------------------------------

def test_list_file_picks_the_usable_shard_holding_the_expiry(lab, tmp_path, ct_log):
    host, name = host_cert(lab, "ctl")
    write_list(tmp_path, full_list(ct_log))
    config = list_config(tmp_path, lab, host, name, "ct-logs.json", logs=(TERN, HERON))  # relative: beside the config
    result = run_acmebot(config)
    warnings = assert_warned_ok(result)
    leaf = leaf_of(tmp_path, name)
    log1, log2 = ct_log.logs["log1"], ct_log.logs["log2"]
    assert f"Installed SCT from {TERN} for {name} (ecdsa)" in result.stdout
    check_sct(sct_file(tmp_path, name, "ecdsa", TERN), leaf, log2)
    assert submissions_of(log2, [der(leaf)]) == [[der(c) for c in chain_of(tmp_path, name, "ecdsa")]]
    assert log1.requests == 0             # neither Tern2000 nor the retired Heron at log1's URL
    assert not sct_file(tmp_path, name, "ecdsa", HERON).exists()
    # the retired log: one warning, naming it, the certificate and the list
    assert len(warnings) == 1, warnings
    assert HERON in warnings[0] and f"{name} (ecdsa" in warnings[0] and "ct-logs.json" in warnings[0], warnings

    # a second run (a daily cron run) says nothing and submits nothing
    again = run_acmebot(config)
    assert_ok(again)
    assert again.stdout == ""
    assert len(submissions_of(log2, [der(leaf)])) == 1 and log1.requests == 0


def test_uncovered_certificate_is_warned_about_once_per_change(lab, tmp_path, ct_log):
    host, name = host_cert(lab, "ctlonce")
    path = write_list(tmp_path, log_list([tern_2000(ct_log)]))      # no shard holds today's certificates
    config = list_config(tmp_path, lab, host, name, str(path))
    first = run_acmebot(config)
    warnings = assert_warned_ok(first)
    assert len(warnings) == 1, warnings
    assert TERN in warnings[0] and f"{name} (ecdsa, expires " in warnings[0] and "usable shard" in warnings[0]
    assert not sct_file(tmp_path, name, "ecdsa", TERN).exists()
    assert all(log.requests == 0 for log in ct_log.logs.values())
    for args in ((), ("--sct",)):       # not again
        again = run_acmebot(config, *args)
        assert_ok(again)
        assert again.stdout == ""

    # the list gains a shard that holds it: submitted, quietly
    write_list(tmp_path, log_list([tern_2000(ct_log)], [tern_now(ct_log)]))
    covered = run_acmebot(config, "--sct")
    assert_ok(covered)
    assert covered.stdout.strip() == f"Installed SCT from {TERN} for {name} (ecdsa)"
    check_sct(sct_file(tmp_path, name, "ecdsa", TERN), leaf_of(tmp_path, name), ct_log.logs["log2"])

    # and loses it again: a new warning, once
    write_list(tmp_path, log_list([tern_2000(ct_log)]))
    lost = run_acmebot(config, "--sct")
    assert len(assert_warned_ok(lost)) == 1 and TERN in lost.stderr
    assert_ok(run_acmebot(config, "--sct"))


def test_list_url_is_cached_and_a_failed_fetch_falls_back_to_the_cache(lab, tmp_path, ct_log, list_server):
    host, name = host_cert(lab, "ctlurl")
    config = list_config(tmp_path, lab, host, name, list_server.url)
    cache = tmp_path / "resource" / "ct_log_list.json"
    log2 = ct_log.logs["log2"]
    assert_ok(run_acmebot(config))
    leaf = leaf_of(tmp_path, name)
    sct = sct_file(tmp_path, name, "ecdsa", TERN)
    check_sct(sct, leaf, log2)
    assert list_server.requests == 1
    assert json.loads(cache.read_text())["url"] == list_server.url

    # a day has not passed: the cached copy, no request
    again = run_acmebot(config, "--sct")
    assert_ok(again)
    assert again.stdout == "" and list_server.requests == 1

    # two days later the server is down: the cached copy, with a warning naming both
    list_server.set_mode("down")
    old = time.time() - 2 * 86400
    os.utime(cache, (old, old))
    sct.unlink()
    stale = run_acmebot(config, "--sct")
    warnings = assert_warned_ok(stale)
    assert len(warnings) == 1, warnings
    assert list_server.url in warnings[0] and str(cache) in warnings[0], warnings
    assert stale.stdout.strip() == f"Installed SCT from {TERN} for {name} (ecdsa)"
    check_sct(sct, leaf, log2)

    # no cached copy either: the built-in logs, which do not know the list's log
    cache.unlink()
    count = len(log2.submissions)
    builtin = run_acmebot(config, "--sct")
    warnings = assert_warned_ok(builtin)
    assert len(warnings) == 2, warnings
    assert any(list_server.url in w and "built-in" in w for w in warnings), warnings
    assert any(TERN in w and name in w and "built-in" in w for w in warnings), warnings
    assert len(log2.submissions) == count

    # the server is back: fetched and cached again, and the SCT in place is kept
    list_server.set_mode("normal")
    back = run_acmebot(config, "--sct")
    assert_ok(back)
    assert back.stdout == "" and list_server.requests == 2 and cache.exists()
    assert len(log2.submissions) == count


@pytest.mark.parametrize("body,reason", [
    (b"<html>maintenance</html>", "not valid JSON"),
    ("BADLOG", "operators[0].logs[0].log_id: is not the SHA-256 of the key"),
    (b"[" + b" " * (5 << 20) + b"]", "larger than"),
], ids=["not-json", "bad-log", "too-big"])
def test_a_bad_download_is_a_failed_fetch_not_a_failed_run(lab, tmp_path, ct_log, list_server, body, reason):
    """The list at a URL is not the admin's file: a bad one is a warning naming the URL
    and what is wrong, is not cached, and the run goes on (here with the built-in logs)."""
    if body == "BADLOG":
        body = json.dumps(log_list([dict(tern_2000(ct_log), log_id=ct_log.logs["log2"].log_id_b64)])).encode()
    list_server.body = body
    host, name = host_cert(lab, "ctldl")
    config = list_config(tmp_path, lab, host, name, list_server.url)
    result = run_acmebot(config)
    warnings = assert_warned_ok(result)
    assert len(warnings) == 2, warnings
    assert any(list_server.url in w and reason in w and "built-in" in w for w in warnings), warnings
    assert any(TERN in w and name in w for w in warnings), warnings
    assert not (tmp_path / "resource" / "ct_log_list.json").exists()
    assert all(log.requests == 0 for log in ct_log.logs.values())


def test_a_list_url_that_drops_a_named_log_is_a_warning_not_a_stopped_run(lab, tmp_path, ct_log, list_server):
    """A list file is the admin's: naming a log it lacks is a configuration error (see
    test_setting_errors).  A list at a URL changes by itself: renewals go on, with a warning."""
    host, name = host_cert(lab, "ctldrop")
    config = list_config(tmp_path, lab, host, name, list_server.url, logs=(TERN, "loopback_logs_gone"))
    result = run_acmebot(config)
    warnings = assert_warned_ok(result)
    assert len(warnings) == 1 and "loopback_logs_gone" in warnings[0] and list_server.url in warnings[0], warnings
    assert f"Issued certificate {name} (ecdsa)" in result.stdout
    check_sct(sct_file(tmp_path, name, "ecdsa", TERN), leaf_of(tmp_path, name), ct_log.logs["log2"])


# -- errors -------------------------------------------------------------------------------------------------

def _bad_lists(ct_log):
    good = tern_now(ct_log)
    return {
        "not-json": ("{\"operators\": [", "line 1 column"),
        "no-operators": ({"logs": []}, ": operators: must be a list"),
        "bad-date": (log_list(tiled_logs=[dict(good, temporal_interval={
            "start_inclusive": "2001-01-01T00:00:00Z", "end_exclusive": "soon"})]),
            ": operators[0].tiled_logs[0].temporal_interval.end_exclusive: must be a date"),
        "wrong-log-id": (log_list([dict(tern_2000(ct_log), log_id=ct_log.logs["log2"].log_id_b64)]),
                         ": operators[0].logs[0].log_id: is not the SHA-256 of the key"),
        "no-url": (log_list([{k: v for k, v in tern_2000(ct_log).items() if k != "url"}]),
                   ": operators[0].logs[0].url: must be the log's http(s) URL"),
        "state": (log_list([dict(tern_2000(ct_log), state="usable")]), ": operators[0].logs[0].state: must be"),
        "interval": (log_list(tiled_logs=[dict(good, temporal_interval={
            "start_inclusive": "2200-01-01T00:00:00Z", "end_exclusive": "2001-01-01T00:00:00Z"})]),
            ": operators[0].tiled_logs[0].temporal_interval: end_exclusive must be after start_inclusive"),
    }


@pytest.mark.parametrize("case", ["not-json", "no-operators", "bad-date", "wrong-log-id", "no-url", "state",
                                  "interval"])
def test_malformed_list_is_one_error_line_naming_the_place_and_nothing_is_done(lab, tmp_path, ct_log, case):
    data, where = _bad_lists(ct_log)[case]
    path = write_list(tmp_path, data)
    config = list_config(tmp_path, lab, "ctlbad", "ctlbad.example.test", str(path))
    result = run_acmebot(config)
    assert result.returncode == 2, result.stdout + result.stderr
    assert_clean(result)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ERROR: {path}") and where in lines[0], result.stderr
    assert not (tmp_path / "certs").exists() and not (tmp_path / "private").exists()
    assert all(log.requests == 0 for log in ct_log.logs.values())


@pytest.mark.parametrize("value,logs,where", [
    ("http://ct.example.net/log_list.json", [TERN], "settings.ct_log_list: must be"),
    ("ftp://127.0.0.1/log_list.json", [TERN], "settings.ct_log_list: must be"),
    ("", [TERN], "settings.ct_log_list: must be"),
    ("missing.json", [TERN], "settings.ct_log_list: cannot read"),
    ("LIST", ["nosuchlog"], "settings.ct_submit_logs[0]: unknown log 'nosuchlog'"),
])
def test_setting_errors(lab, tmp_path, ct_log, value, logs, where):
    if value == "LIST":
        value = str(write_list(tmp_path, full_list(ct_log)))
    config = list_config(tmp_path, lab, "ctlcfg", "ctlcfg.example.test", value, logs=logs)
    result = run_acmebot(config, "--sct")
    assert result.returncode == 2, result.stdout + result.stderr
    assert_clean(result)
    assert len(result.stderr.splitlines()) == 1 and where in result.stderr, result.stderr


# -- in process: names and the built-in list ---------------------------------------------------------------

@pytest.mark.parametrize("operator,description,name", [
    ("Google", "Google 'Argon2027h1' log", "google_argon"),
    ("Let's Encrypt", "Let's Encrypt 'Sycamore2027h1'", "lets_encrypt_sycamore"),
    ("Cloudflare", "Cloudflare 'Nimbus2027'", "cloudflare_nimbus"),
    ("DigiCert", "DigiCert 'Wyvern2027h1'", "digicert_wyvern"),
    ("TrustAsia", "TrustAsia 'log2026a'", "trustasia_loga"),
    ("IPng Networks", "IPng Networks 'Halloumi2026h2a'", "ipng_networks_halloumia"),
    ("Example", "Example log 2027", "example_log"),
])
def test_log_names(operator, description, name):
    assert ab.ct_log_family(operator, description, "AAAA") == name
    assert ab.check_safe_name(name) == name


def test_the_built_in_logs_as_a_published_list_have_the_built_in_names_and_shards():
    """The built-in logs written as Chrome publishes them (one entry per shard, Let's
    Encrypt's as tiled logs) read back as the built-in logs, under the same names."""
    operators = {"google": "Google", "cloudflare": "Cloudflare", "digicert": "DigiCert", "sectigo": "Sectigo",
                 "lets_encrypt": "Let's Encrypt"}
    published = {}
    for name, shards in ab.DEFAULT_CT_LOGS.items():
        prefix = next(p for p in operators if name.startswith(p + "_"))
        operator = published.setdefault(prefix, {"name": operators[prefix], "logs": [], "tiled_logs": []})
        for shard in shards:
            period = shard["start"][:4] + ("" if prefix == "cloudflare" else "h1" if shard["start"] < "2026-07" else "h2")
            tiled = prefix == "lets_encrypt"
            published_name = name[len(prefix) + 1:].capitalize()
            operator["tiled_logs" if tiled else "logs"].append(entry(
                f"{operators[prefix]} '{published_name}{period}'", shard["key"], shard["log_id"], shard["url"],
                shard["start"], shard["end"], tiled=tiled))
    logs = ab.parse_ct_log_list({"operators": list(published.values())}, "built-in")
    config = ab.parse_config({"settings": {"file_user": USER, "file_group": GROUP}}, "/etc/acmebot/acmebot.json")
    assert logs == {name: config.ct_logs[name] for name in ab.DEFAULT_CT_LOGS}


@pytest.mark.parametrize("value,ok", [
    ("https://www.gstatic.com/ct/log_list/v3/log_list.json", True),
    ("http://127.0.0.1:8080/log_list.json", True),
    ("http://[::1]/log_list.json", True),
    ("http://localhost/log_list.json", True),
    ("lists/log_list.json", True),
    (None, True),
    ("http://www.gstatic.com/ct/log_list/v3/log_list.json", False),
    ("file:///etc/log_list.json", False),
    ("", False),
    (3, False),
])
def test_ct_log_list_setting_values(value, ok):
    c = ab._Checker()
    result = ab._ct_log_list(value, "settings.ct_log_list", c)
    assert (result == value and not c.problems) if ok else (result is ab._BAD and c.problems)
