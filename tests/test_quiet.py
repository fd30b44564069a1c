"""The quiet path (issue 12, item 6): a plain run after a full run that changed
nothing decides from the quiet record (directories.resource/quiet.json: the
config's digest, the files' stat facts, the earliest instant anything is due)
without parsing a certificate; every change it depends on sends the run the full
way again.  --verbose says "quiet:" when the quiet path is taken; --debug says
why it is not ("quiet record: a full run: ...")."""

import datetime
import json
import os
import re
import subprocess
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import make_config, run_acmebot
from lab import acmebot_command
from lab.inprocess import FakeClock, run_main
from test_issue import assert_ok, default_paths
from test_units import GROUP, USER, ab

QUIET = "quiet: nothing changed since the last full run"
FULL = "quiet record: a full run: "


def quiet_run(config, *args):
    """One run with --debug; (took the quiet path, why not, output)."""
    result = run_acmebot(config, "--debug", *args)
    assert_ok(result)
    why = [line.split(FULL, 1)[1] for line in result.stdout.splitlines() if FULL in line]
    return QUIET in result.stdout, (why[0] if why else None), result.stdout


def settle(config):
    """A full run that finds nothing to do (it writes the record), then a quiet one."""
    took, why, out = quiet_run(config)
    assert not took and "quiet record written" in out, out
    took, why, out = quiet_run(config)
    assert took, why


def issued(lab, tmp_path, host, overrides=None):
    lab.add_hosts("example.test", host)
    name = f"{host}.example.test"
    config = make_config(tmp_path, lab, {"certificates": {name: {"key_types": ["ecdsa"]}}, **(overrides or {})})
    result = run_acmebot(config)
    assert_ok(result)
    assert f"Issued certificate {name} (ecdsa)" in result.stdout
    return config, name, default_paths(tmp_path, name, "ecdsa")


# -- lab: the quiet path is taken, and every change is noticed ---------------------------------

def test_every_change_sends_the_run_the_full_way(lab, tmp_path):
    config, name, paths = issued(lab, tmp_path, "quiet1")
    settle(config)

    # a file rewritten with the same bytes: its facts changed, nothing else to do
    paths["key"].write_bytes(paths["key"].read_bytes())
    took, why, out = quiet_run(config)
    assert not took and why == f"{paths['key']} changed", out
    assert "Issued" not in out
    assert quiet_run(config)[0]

    # a state file (the key state) edited in place
    state = tmp_path / "resource" / "keys" / f"{name}.json"
    state.write_text(json.dumps(json.loads(state.read_text()), indent=4))
    took, why, _ = quiet_run(config)
    assert not took and why == f"{state} changed"
    assert quiet_run(config)[0]

    # a certificate replaced by another file (its chain): reissued
    os.replace(paths["chain"], paths["certificate"])
    took, why, out = quiet_run(config)
    assert not took and why == f"{paths['certificate']} changed", out
    assert f"Issued certificate {name} (ecdsa)" in out
    settle(config)

    # a file deleted: reissued
    paths["full_key"].unlink()
    took, why, out = quiet_run(config)
    assert not took and why == f"{paths['full_key']} changed", out
    assert f"Issued certificate {name} (ecdsa)" in out
    settle(config)

    # the config edited (a setting that changes nothing on disk)
    raw = json.loads(config.read_text())
    raw["settings"]["max_workers"] = 3
    config.write_text(json.dumps(raw, indent=2))
    took, why, _ = quiet_run(config)
    assert not took and why == "the config or acmebot changed"
    assert quiet_run(config)[0]

    # a damaged record
    record = tmp_path / "resource" / "quiet.json"
    record.write_text('{"format": 1, "files": ')
    took, why, _ = quiet_run(config)
    assert not took and why.startswith(f"cannot use {record}")
    assert quiet_run(config)[0]

    # a pending service reload (left by a run that could not reload)
    marker = tmp_path / "resource" / "reloads" / f"{name}.json"
    marker.parent.mkdir(exist_ok=True)
    marker.write_text("[]")
    took, why, _ = quiet_run(config)
    assert not took and why == f"{marker.parent} is not empty"


def test_options_that_ask_for_work_bypass_it(lab, tmp_path):
    """--renew, --rollover, --verify, a phase option or a key name: a full run,
    which also removes the record (the next plain run is a full one)."""
    config, name, _ = issued(lab, tmp_path, "quiet2")
    record = tmp_path / "resource" / "quiet.json"
    for args, done in ((["--verify"], None), (["--certs"], None), ([name], None),
                       (["--renew"], f"Issued certificate {name} (ecdsa)"),
                       (["--rollover", "--force"], f"Issued certificate {name} (ecdsa)")):
        settle(config)
        took, why, out = quiet_run(config, *args)
        assert not took and why == "not a plain run", (args, out)
        assert not record.exists()
        if done:
            assert done in out


def test_status_check_and_metrics_after_a_quiet_run(lab, tmp_path):
    """The quiet path rewrites the metrics file (this run's time and exit code,
    the certificates as the full run saw them); --status and --check say the same
    as after a full run."""
    metrics = tmp_path / "metrics" / "acmebot.prom"
    metrics.parent.mkdir()
    config, name, _ = issued(lab, tmp_path, "quiet3", {"settings": {"metrics_file": str(metrics)}})
    run_acmebot(config)                      # the full run that writes the record
    full_metrics = metrics.read_text()
    status, check = run_acmebot(config, "--status", "--json"), run_acmebot(config, "--check")
    started = time.time()
    took, why, _ = quiet_run(config)
    assert took, why

    def without_run_lines(text):
        return [line for line in text.splitlines() if "_last_" not in line]

    text = metrics.read_text()
    assert without_run_lines(text) == without_run_lines(full_metrics)
    stamp = float(next(line.split()[1] for line in text.splitlines()
                       if line.startswith("acmebot_last_run_timestamp_seconds ")))
    assert stamp >= started
    assert "acmebot_last_run_exit_code 0" in text
    assert f'acmebot_certificate_present{{certificate="{name}",key_type="ecdsa"}} 1' in text
    assert json.loads(run_acmebot(config, "--status", "--json").stdout) == json.loads(status.stdout)
    assert check.returncode == 0
    again = run_acmebot(config, "--check")
    assert (again.returncode, again.stdout) == (0, check.stdout)


def test_record_names_every_file_a_full_run_reads(lab, tmp_path):
    """Every file under the test's directory that a full run with nothing to do
    opens or looks for (strace: open, stat and access calls, so existence checks
    count too) is in the quiet record; but the config (its digest is), the
    record itself, the log, the run lock, temp files and the directories that
    are listed rather than read (conf.d, the journal, the reload markers).  A later change that
    makes the run read or check a file without adding it to quiet_paths()
    fails here.  Every optional file kind is configured: HPKP headers, previous
    keys (pinned while their files exist), parameters, OCSP and SCT files."""
    previous = tmp_path / "previous"
    config, name, _ = issued(lab, tmp_path, "quiet4", {
        "settings": {"hpkp_days": 1, "dhparam_size": 2048},
        "directories": {"previous_key": str(previous)}})
    trace = tmp_path / "trace.txt"
    argv, env, cwd = acmebot_command(config)
    result = subprocess.run(["strace", "-f", "-qq", "-o", str(trace), "-e",
                             "trace=open,openat,stat,lstat,newfstatat,statx,access,faccessat,faccessat2",
                             *argv], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert (result.returncode, result.stderr) == (0, ""), result.stdout + result.stderr
    record = json.loads((tmp_path / "resource" / "quiet.json").read_text())
    prefix = str(tmp_path) + "/"
    seen = {match for line in trace.read_text().splitlines()
            for match in re.findall(r'"([^"]+)"', line) if match.startswith(prefix)}
    # conf.d is in the config's digest; the journal and reload directories are checked for entries
    left_out = {str(config), str(tmp_path / "resource" / "quiet.json"), str(trace), str(tmp_path / "conf.d"),
                str(tmp_path / "resource" / "journal"), str(tmp_path / "resource" / "reloads")}
    seen = {path for path in seen if path not in left_out and not os.path.isdir(path)
            and Path(path).relative_to(tmp_path).parts[0] not in ("log", "run")
            and not Path(path).name.startswith(ab.TEMP_PREFIX)}
    assert str(previous / f"{name}_previous.ecdsa.key") in seen        # looked for, absent
    assert seen <= set(record["files"]), sorted(seen - set(record["files"]))


def test_the_quiet_path_ends_when_something_is_due(lab, tmp_path):
    """In process, with a clock the test moves: a new certificate's renewal
    information is first asked for a day after issuance, so the record says
    quiet until then (--debug names the instant); a minute before, the run is
    quiet, at that instant it goes the full way (and asks the CA, which has no
    renewalInfo: renewal_info.json records that); the next run goes the full way
    too, as after any run that wrote a state file (the record's facts are taken
    before the run reads, so that a change by someone else during it is never
    missed), and the one after is quiet again."""
    lab.add_hosts("example.test", "quiet5")
    config = make_config(tmp_path, lab, {"certificates": {"quiet5.example.test": {"key_types": ["ecdsa"]}}})
    clock = FakeClock(real_sleep=True)
    assert_ok(run_main(config, clock=clock))
    full = run_main(config, "--debug", clock=clock)
    assert_ok(full)
    until = datetime.datetime.fromisoformat(re.search(r"quiet record written: nothing is due before (\S+)",
                                                      full.stdout).group(1))
    assert datetime.timedelta(hours=23) < until - clock() <= datetime.timedelta(days=1)
    renewal_info = tmp_path / "resource" / "renewal_info.json"
    for minutes, why in ((-1, None), (0, f"something may be due from {until.isoformat()}"),
                         (1, f"{renewal_info} changed"), (2, None)):
        clock.set(until + datetime.timedelta(minutes=minutes))
        result = run_main(config, "--debug", clock=clock)
        assert_ok(result)
        assert (QUIET in result.stdout) == (why is None), (minutes, result.stdout)
        if why:
            assert f"{FULL}{why}" in result.stdout


# -- unit: when something becomes due, with the run's own clock (Context.now) -------------------

def _certificate(name, days):
    """A self-signed P-256 certificate for `name`, valid for `days` from now, with its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return pem_key, cert.public_bytes(serialization.Encoding.PEM), cert.not_valid_after_utc


def test_quiet_until_the_days_rule_then_a_full_run(tmp_path):
    name = "unit.example.test"
    dirs = {kind: str(tmp_path / kind) for kind in ("resource", "private_key", "backup_key", "full_key",
                                                    "certificate", "chain", "full_certificate", "pid")}
    dirs.update(previous_key=None, hpkp=None, sct=None, ocsp=None, log=None, param=None)
    raw = {"account": {"email": "admin@example.test"},
           "settings": {"file_user": USER, "file_group": GROUP, "renewal_days": 20},
           "directories": dirs, "http_challenges": {name: str(tmp_path / "web")},
           "certificates": {name: {"key_types": ["ecdsa"]}}}
    config = ab.parse_config(raw, str(tmp_path / "acmebot.json"))
    key_pem, cert_pem, not_after = _certificate(name, 90)
    for kind, data in (("private_key", key_pem), ("certificate", cert_pem)):
        os.makedirs(dirs[kind], exist_ok=True)
    primary, _ = ab.key_paths(config, config.keys[0], "ecdsa")
    Path(primary).write_bytes(key_pem)
    Path(ab.cert_paths(config, config.keys[0].certificates[0], "ecdsa")["certificate"]).write_bytes(cert_pem)

    def quiet_at(now):
        ctx = ab.Context(config=config, keys=config.keys, passphrases={}, report=ab.Report(),
                         state=ab.RunState(now=now))
        with ab.run_lock(config) as lock:
            quiet = ab.QuietRun(ctx, lock, True)
            return quiet, quiet.begin(), ctx

    start = datetime.datetime.now(datetime.timezone.utc)
    quiet, took, ctx = quiet_at(start)
    assert not took
    assert ab.quiet_until(ctx) == start + ab.QUIET_MAX_AGE          # a week at most
    assert quiet.end(0) == 0
    record = json.loads((tmp_path / "resource" / "quiet.json").read_text())
    assert ab.state_time(record["until"]) == start + ab.QUIET_MAX_AGE
    # the files written just now are compared by content too (a coarse clock's tick could hide a change)
    assert len(record["files"][primary]) == 9
    assert quiet_at(start + ab.QUIET_MAX_AGE - datetime.timedelta(seconds=1))[1]
    assert not quiet_at(start + ab.QUIET_MAX_AGE)[1]
    assert not (tmp_path / "resource" / "quiet.json").exists()      # a full run removes it first

    # a week before the days rule: due then, not a week later
    later = not_after - datetime.timedelta(days=21)
    quiet, took, ctx = quiet_at(later)
    assert not took
    quiet.end(0)
    assert quiet_at(not_after - datetime.timedelta(days=20, seconds=1))[1]
    assert not quiet_at(not_after - datetime.timedelta(days=20))[1]
    # a clock that went back past the record's time is a doubt too
    quiet, _, _ = quiet_at(later)
    quiet.end(0)
    assert not quiet_at(later - datetime.timedelta(seconds=1))[1]
