"""The state acmebot keeps in directories.resource (§13), through its own types, in
process: each file round-trips, a damaged one is a warning and counts as empty (or a
problem for --check), and a file as the previous version wrote it loads and is written
back unchanged, so an older acmebot reads what this one writes.  The report (§14) is
the one place outcomes and the exit code are recorded."""

import contextlib
import datetime
import json
import logging
import os
import stat

import pytest

from test_units import ab, config, parse

URL = "https://ca.example.test/dir"
NOW = datetime.datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=datetime.timezone.utc)
SPKI = b"0Y0\x13\x06\x07*\x86H\xce=\x02\x01public key bytes"


def state_config(tmp_path, url=URL):
    return parse(config(settings={"acme_directory_url": url},
                        directories={"archive": str(tmp_path / "archive"), "resource": str(tmp_path / "resource")},
                        certificates={"www.example.test": {}}), str(tmp_path / "acmebot.json"))


def write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(data if isinstance(data, str) else json.dumps(data, indent=2, sort_keys=True))


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


JSON_ERROR = "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"


@contextlib.contextmanager
def logged(level=logging.WARNING):
    """The messages acmebot's logger emits in the block (whatever an in-process
    main() of another test did to its handlers and propagation)."""
    messages = []
    handler = logging.Handler(level)
    handler.emit = lambda record: messages.append(record.getMessage())
    before = ab.log.level
    ab.log.setLevel(level)
    ab.log.addHandler(handler)
    try:
        yield messages
    finally:
        ab.log.removeHandler(handler)
        ab.log.setLevel(before)


def load_damaged(cls, cfg, *args, what):
    """cls.load of a file that is not JSON: one warning naming it, and an empty state."""
    path = cls.path(cfg, *args)
    write_json(path, "{not json")
    with logged() as messages:
        loaded = cls.load(cfg, *args)
    assert messages == [f"ignoring damaged {what} {path}: {JSON_ERROR}"]
    return loaded


# Files as acmebot 3.0.0 before the typed state wrote them.
PREVIOUS_KEY_STATE = {
    "directory": {"www.example.test/ecdsa": URL, "www.example.test/rsa": URL},
    "ecdsa": {"backup_created": "2026-10-01T08:00:00.500000+00:00", "backup_spki": "YmFja3Vw",
              "primary_created": "2026-09-01T08:00:00+00:00", "primary_spki": "cHJpbWFyeQ==",
              "previous_spki": "cHJldmlvdXM="},
    "must_staple": {"www.example.test/ecdsa": False, "www.example.test/rsa": True},
    "profile": {"www.example.test/ecdsa": None, "www.example.test/rsa": "shortlived"},
    "rsa": {"backup_created": "2026-10-01T08:00:00+00:00", "backup_spki": "YmFja3Vw",
            "primary_created": "2026-10-01T08:00:00+00:00", "primary_spki": "cHJpbWFyeQ=="},
}
PREVIOUS_ARI_STATE = {
    "certificates": {"aaa.bbb": {"next_check": "2026-12-01T12:00:00+00:00"},
                     "ccc.ddd": {"chosen": "2027-01-10T03:04:05.678900+00:00", "end": "2027-01-12T00:00:00+00:00",
                                 "next_check": "2026-11-30T18:00:00+00:00", "start": "2027-01-09T00:00:00+00:00"}},
    "checked": "2026-11-30T12:00:00+00:00", "directory": URL, "renewal_info": True}
PREVIOUS_AUTHZ = {"directory": URL, "expires": {"*.example.test": "2026-12-30T12:00:00+00:00",
                                                "www.example.test": "2026-12-29T12:00:00+00:00"}}
PREVIOUS_RESULTS = {"certificates": {
    "www.example.test/ecdsa": {"reason": "no certificate yet", "result": "issued",
                               "time": "2026-11-29T12:00:00.250000+00:00"},
    "www.example.test/rsa": {"problem": "http-01 validation failed: 404", "result": "failed",
                             "time": "2026-11-30T12:00:00+00:00"}}}


# -- KeyState -------------------------------------------------------------------

def test_key_state_round_trip_through_its_transaction(tmp_path):
    cfg = state_config(tmp_path)
    state = ab.KeyState.load(cfg, "www.example.test")
    assert state == ab.KeyState("www.example.test")           # no file yet: empty
    entry = state.key_type("ecdsa")
    entry.primary_created, entry.backup_created, entry.backup_spki = NOW, NOW, SPKI
    state.issued["www.example.test/ecdsa"] = ab.IssueRecord(True, "tlsserver", URL)
    state.revoking = ab.Revocation(1, {"www.example.test/ecdsa": "1f"})
    state.save(cfg)
    path = ab.KeyState.path(cfg, "www.example.test")
    assert path == str(tmp_path / "resource" / "keys" / "www.example.test.json")
    assert not os.stat(path).st_mode & 0o007                  # never world-readable
    again = ab.KeyState.load(cfg, "www.example.test")
    assert again == state
    assert again.age_days("ecdsa", "backup", NOW + datetime.timedelta(days=2)) == 2
    assert again.age_days("rsa", "backup", NOW) is None
    assert again.spki("ecdsa", "backup") == SPKI and again.spki("ecdsa", "primary") is None
    assert again.record("www.example.test", "rsa") == ab.IssueRecord()


def test_key_state_staged_in_a_transaction_is_written_by_its_commit(tmp_path):
    cfg = state_config(tmp_path)
    state = ab.KeyState("k", revoked=True)
    transaction = ab.Transaction(cfg, "k", NOW)
    state.save(cfg, transaction)
    assert not os.path.exists(ab.KeyState.path(cfg, "k"))    # staged, not written
    transaction.commit()
    assert read_json(ab.KeyState.path(cfg, "k")) == {"revoked": True}


def test_key_state_of_the_previous_version_loads_and_is_written_back_unchanged(tmp_path):
    cfg = state_config(tmp_path)
    write_json(ab.KeyState.path(cfg, "www.example.test"), PREVIOUS_KEY_STATE)
    state = ab.KeyState.load(cfg, "www.example.test")
    assert state.types["ecdsa"].backup_created == datetime.datetime(2026, 10, 1, 8, 0, 0, 500000,
                                                                     tzinfo=datetime.timezone.utc)
    assert state.spki("ecdsa", "previous") == b"previous"
    assert state.record("www.example.test", "rsa") == ab.IssueRecord(True, "shortlived", URL)
    assert state.record("www.example.test", "ecdsa") == ab.IssueRecord(False, None, URL)
    assert state.to_json() == PREVIOUS_KEY_STATE
    state.save(cfg)
    assert read_json(ab.KeyState.path(cfg, "www.example.test")) == PREVIOUS_KEY_STATE


def test_key_state_before_the_ca_was_recorded_and_during_a_revocation(tmp_path):
    cfg = state_config(tmp_path)
    older = {k: v for k, v in PREVIOUS_KEY_STATE.items() if k != "directory"}
    older["revoking"] = {"reason": 4, "certificates": {"www.example.test/ecdsa": "abc123"}}
    write_json(ab.KeyState.path(cfg, "k"), older)
    state = ab.KeyState.load(cfg, "k")
    assert state.record("www.example.test", "ecdsa").directory is None
    assert state.revoking == ab.Revocation(4, {"www.example.test/ecdsa": "abc123"})
    assert state.to_json() == older
    older["revoking"] = {"reason": 4, "certificates": "abc123"}             # damaged: kept as damaged
    write_json(ab.KeyState.path(cfg, "k"), older)
    assert ab.KeyState.load(cfg, "k").revoking == ab.Revocation(0, None)
    older["revoking"] = {}                                                 # empty: no revocation
    write_json(ab.KeyState.path(cfg, "k"), older)
    assert ab.KeyState.load(cfg, "k").revoking is None


def test_damaged_key_state_is_a_warning_and_empty(tmp_path):
    assert load_damaged(ab.KeyState, state_config(tmp_path), "k", what="key state") == ab.KeyState("k")


# -- AriState -------------------------------------------------------------------

def test_ari_state_round_trip_and_written_only_when_changed(tmp_path):
    cfg = state_config(tmp_path)
    state = ab.AriState.load(cfg)
    assert state.certificates == {} and state.directory == URL
    state.save(cfg)
    assert not os.path.exists(ab.AriState.path(cfg))           # nothing changed: nothing written
    state.certificates["x.y"] = ab.AriWindow(NOW, NOW, NOW + datetime.timedelta(days=1), NOW)
    state.checked, state.renewal_info = NOW, False
    state.save(cfg)
    again = ab.AriState.load(cfg)
    assert again == state and again.certificates["x.y"].known
    mtime = os.stat(ab.AriState.path(cfg)).st_mtime_ns
    again.save(cfg)
    assert os.stat(ab.AriState.path(cfg)).st_mtime_ns == mtime


def test_ari_state_of_the_previous_version_loads_and_is_written_back_unchanged(tmp_path):
    cfg = state_config(tmp_path)
    write_json(ab.AriState.path(cfg), PREVIOUS_ARI_STATE)
    state = ab.AriState.load(cfg)
    assert state.renewal_info is True and not state.certificates["aaa.bbb"].known
    assert state.certificates["ccc.ddd"].chosen.isoformat() == "2027-01-10T03:04:05.678900+00:00"
    assert state.to_json() == PREVIOUS_ARI_STATE
    # another CA's state is forgotten (but shown by --status)
    assert ab.AriState.load(state_config(tmp_path, "https://other.example/dir")).certificates == {}
    assert ab.AriState.load(state_config(tmp_path, "https://other.example/dir"), [], any_ca=True).certificates \
        == state.certificates


def test_damaged_ari_state_is_a_warning_or_a_problem_for_check(tmp_path):
    cfg = state_config(tmp_path)
    assert load_damaged(ab.AriState, cfg, what="renewal information") == ab.AriState(URL)
    problems = []
    with logged() as messages:
        assert ab.AriState.load(cfg, problems, any_ca=True).certificates == {}
    assert problems == [f"cannot read {ab.AriState.path(cfg)}: {JSON_ERROR}"] and messages == []
    write_json(ab.AriState.path(cfg), {"directory": URL, "certificates": []})
    problems = []
    ab.AriState.load(cfg, problems, any_ca=True)
    assert problems == [f"cannot read {ab.AriState.path(cfg)}: no certificates object"]


# -- AuthzCache -----------------------------------------------------------------

def test_authz_cache_round_trip_and_previous_format(tmp_path):
    cfg = state_config(tmp_path)
    cache = ab.AuthzCache.load(cfg)
    cache.save(cfg)
    assert not os.path.exists(ab.AuthzCache.path(cfg))
    cache.record("www.example.test", NOW.astimezone(datetime.timezone(datetime.timedelta(hours=2))))
    cache.save(cfg)
    assert ab.AuthzCache.load(cfg) == cache
    assert read_json(ab.AuthzCache.path(cfg)) == {"directory": URL, "expires": {"www.example.test": NOW.isoformat()}}
    write_json(ab.AuthzCache.path(cfg), PREVIOUS_AUTHZ)
    cache = ab.AuthzCache.load(cfg)
    assert cache.expires["*.example.test"] == datetime.datetime(2026, 12, 30, 12, tzinfo=datetime.timezone.utc)
    assert cache.to_json() == PREVIOUS_AUTHZ
    assert ab.AuthzCache.load(state_config(tmp_path, "https://other.example/dir")).expires == {}


def test_damaged_authz_cache_is_a_warning_and_empty(tmp_path):
    assert load_damaged(ab.AuthzCache, state_config(tmp_path), what="authorization cache").expires == {}


# -- SctState -------------------------------------------------------------------

def test_sct_state_round_trip_previous_format_and_damage(tmp_path):
    cfg = state_config(tmp_path)
    state = ab.SctState.load(cfg)
    assert not state.matches("/certs/a.sct", b"leaf")
    state.record("/certs/a.sct", b"leaf")
    state.save(cfg)
    again = ab.SctState.load(cfg)
    assert again == state and again.matches("/certs/a.sct", b"leaf") and not again.matches("/certs/a.sct", b"other")
    previous = {"/certs/a.sct": "00" * 32, "/certs/b.sct": "11" * 32}
    write_json(ab.SctState.path(cfg), previous)
    assert ab.SctState.load(cfg).leaves == previous
    assert load_damaged(ab.SctState, cfg, what="SCT state").leaves == {}


# -- RunResults and the report ---------------------------------------------------

def test_run_results_round_trip_and_previous_format(tmp_path):
    cfg = state_config(tmp_path)
    write_json(ab.RunResults.path(cfg), PREVIOUS_RESULTS)
    results = ab.RunResults.load(cfg)
    assert results.last("www.example.test", "rsa") == ab.RunResult(
        datetime.datetime(2026, 11, 30, 12, tzinfo=datetime.timezone.utc), "failed", "http-01 validation failed: 404")
    assert results.last("www.example.test", "ecdsa").to_json() == \
        PREVIOUS_RESULTS["certificates"]["www.example.test/ecdsa"]
    mtime = os.stat(ab.RunResults.path(cfg)).st_mtime_ns
    results.save(cfg)                                        # unchanged: not rewritten
    assert os.stat(ab.RunResults.path(cfg)).st_mtime_ns == mtime
    results.update({}, ["www.example.test/ecdsa", "www.example.test/rsa"], NOW)
    results.save(cfg)
    saved = read_json(ab.RunResults.path(cfg))["certificates"]
    assert saved["www.example.test/ecdsa"] == PREVIOUS_RESULTS["certificates"]["www.example.test/ecdsa"]
    assert saved["www.example.test/rsa"] == {"time": NOW.isoformat(), "result": "ok"}   # fine again after a failure
    assert stat.S_IMODE(os.stat(ab.RunResults.path(cfg)).st_mode) == 0o640
    assert ab.RunResults.load(cfg) == results


def test_damaged_run_results_are_a_warning_or_a_problem_for_check(tmp_path):
    cfg = state_config(tmp_path)
    assert load_damaged(ab.RunResults, cfg, what="run results").certificates == {}
    problems = []
    ab.RunResults.load(cfg, problems)
    assert problems == [f"cannot read {ab.RunResults.path(cfg)}: {JSON_ERROR}"]
    results = ab.RunResults.load(cfg)
    results.save(cfg)                                        # a damaged file is written anew
    assert read_json(ab.RunResults.path(cfg)) == {"certificates": {}}


class Target:
    """A certificate as phases hand it to Report.record: its spec and key type."""
    def __init__(self, cert, key_type):
        self.cert, self.key_type = cert, key_type


def test_report_records_outcomes_and_the_exit_code_comes_from_them():
    cert = ab.parse_config(config(certificates={"www.example.test": {}, "b.example.test": {}}),
                           "/etc/acmebot/acmebot.json").keys
    www, other = cert[0].certificates[0], cert[1].certificates[0]
    report = ab.Report()
    assert report.exit_code == ab.EXIT_OK
    with logged(logging.INFO) as messages:
        report.record(Target(www, "ecdsa"), ab.ISSUED, "no certificate yet")
        assert report.exit_code == ab.EXIT_OK and report.failures == []
        report.record("certificates", ab.FAILED, ab.AcmeError("the CA is down"), targets=[Target(other, "rsa")])
        report.record((www, "rsa"), ab.EXPIRING, "CERTIFICATE www.example.test (rsa) EXPIRES IN 1.0 DAYS")
        with report.guard("TLSA records in zone example.test"):
            raise ab.ValidationError("refused")
    assert report.exit_code == ab.EXIT_VALIDATION
    assert report.outcome("www.example.test", "ecdsa") == (ab.ISSUED, "no certificate yet")
    assert report.outcome("b.example.test", "rsa") == (ab.FAILED, "the CA is down")
    assert report.outcome("www.example.test", "rsa") == ("", "")       # an expiry notice is no outcome
    assert report.failures == [("certificates", "the CA is down"),
                               ("TLSA records in zone example.test", "refused")]
    assert messages == [
        "certificates: the CA is down", "CERTIFICATE www.example.test (rsa) EXPIRES IN 1.0 DAYS",
        "TLSA records in zone example.test: refused"]
    bug = ab.Report()
    with bug.guard("a bug"):
        raise KeyError("x")
    assert bug.exit_code == ab.EXIT_INTERNAL and bug.failures[0][1].startswith("internal error: KeyError")


@pytest.mark.parametrize("outcomes, expected", [
    ({}, ab.EXIT_OK),
    ({"expiring": ab.EXPIRING}, ab.EXIT_ACME),
    ({"bad": ab.FAILED, "expiring": ab.EXPIRING}, ab.EXIT_VALIDATION),
])
def test_an_expiry_notice_alone_is_exit_3(outcomes, expected):
    report = ab.Report()
    for what, outcome in outcomes.items():
        report.record(what, outcome, ab.ValidationError("x") if outcome == ab.FAILED else "notice")
    assert report.exit_code == expected
    assert len(report.failures) == list(outcomes.values()).count(ab.FAILED)
