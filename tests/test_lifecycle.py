"""Keeping certificates alive: renewal, change detection, rollover, revocation,
master/follower, hooks, services and the run lock — against the real lab."""

import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import ACMEBOT, make_config, run_acmebot
from lab.inprocess import FakeClock, run_main
from test_issue import assert_clean, assert_ok, check_issued, default_paths


def cert_of(path):
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def serial_of(path):
    return cert_of(path).serial_number


def spki(obj):
    public = obj.public_key()
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_of(path):
    return serialization.load_pem_private_key(Path(path).read_bytes(), None)


def issue(lab, tmp_path, host, overrides=None, *args):
    lab.add_hosts("example.test", host)
    name = f"{host}.example.test"
    config = make_config(tmp_path, lab, dict({"certificates": {name: {}}}, **(overrides or {})))
    result = run_acmebot(config, *args)
    assert_ok(result)
    return config, name


# -- renewal -------------------------------------------------------------------------------------

def test_short_certificates_renew_by_a_third_of_their_lifetime_not_every_run(lab, tmp_path):
    # 12-second certificates: renewal_days (30) would renew on every run;
    # a third of the lifetime (4 s) must not until the last 4 s.  In process,
    # the clock set just before and just inside the last third.
    short = lab.pebbles.get("short") or lab.start_pebble("short", {"certificateValidityPeriod": 12})
    lab.add_hosts("example.test", "short")
    config = make_config(tmp_path, lab, {
        "settings": {"acme_directory_url": short.directory_url, "key_size": 0},
        "certificates": {"short.example.test": {}}})
    clock = FakeClock(real_sleep=True)
    assert_ok(run_main(config, clock=clock))
    path = default_paths(tmp_path, "short.example.test", "ecdsa")["certificate"]
    first = cert_of(path)
    assert (first.not_valid_after_utc - first.not_valid_before_utc).total_seconds() <= 13
    clock.set(first.not_valid_after_utc - datetime.timedelta(seconds=4.5))
    again = run_main(config, "--verbose", clock=clock)
    assert_ok(again)
    assert "nothing to do" in again.stdout
    assert serial_of(path) == first.serial_number
    clock.set(first.not_valid_after_utc - datetime.timedelta(seconds=3.5))
    renewed = run_main(config, "--verbose", clock=clock)
    assert_ok(renewed)
    assert "expires" in renewed.stdout
    assert serial_of(path) != first.serial_number


def test_forced_renewal_reissues_with_the_same_key(lab, tmp_path):
    config, name = issue(lab, tmp_path, "forced")
    paths = default_paths(tmp_path, name, "rsa")
    before = serial_of(paths["certificate"])
    key_before = Path(paths["key"]).read_bytes()
    result = run_acmebot(config, "--renew")
    assert_ok(result)
    assert "renewal forced" in result.stdout
    assert serial_of(paths["certificate"]) != before
    assert Path(paths["key"]).read_bytes() == key_before
    check_issued(lab, paths, "rsa", [name])
    archived = list((tmp_path / "archive" / name).rglob(Path(paths["certificate"]).name))
    assert len(archived) == 1 and cert_of(archived[0]).serial_number == before


def test_nothing_due_makes_no_order(lab, tmp_path):
    config, name = issue(lab, tmp_path, "idle")
    result = run_acmebot(config, "--detail")
    assert_ok(result)
    assert "newOrder" not in result.stdout + result.stderr
    assert "POST" not in result.stdout + result.stderr


def test_key_type_added_issues_only_the_new_type(lab, tmp_path):
    config, name = issue(lab, tmp_path, "addtype", {"settings": {"key_curve": None}})
    rsa = default_paths(tmp_path, name, "rsa")["certificate"]
    serial = serial_of(rsa)
    assert not Path(default_paths(tmp_path, name, "ecdsa")["certificate"]).exists()
    raw = json.loads(config.read_text())
    raw["settings"]["key_curve"] = "secp256r1"
    config.write_text(json.dumps(raw))
    result = run_acmebot(config)
    assert_ok(result)
    assert f"Issued certificate {name} (ecdsa)" in result.stdout
    assert f"{name} (rsa)" not in result.stdout.replace("backup key", "")
    assert serial_of(rsa) == serial
    check_issued(lab, default_paths(tmp_path, name, "ecdsa"), "ecdsa", [name])


def test_certificate_not_matching_its_key_is_reissued(lab, tmp_path):
    config, name = issue(lab, tmp_path, "mismatch")
    paths = default_paths(tmp_path, name, "ecdsa")
    # another key in the primary's place, as after a crash or a bad copy
    from cryptography.hazmat.primitives.asymmetric import ec
    other = ec.generate_private_key(ec.SECP256R1())
    Path(paths["key"]).write_bytes(other.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    result = run_acmebot(config, "--verbose")
    assert_ok(result)
    assert "does not match its private key" in result.stdout
    check_issued(lab, paths, "ecdsa", [name])


def test_missing_file_of_the_set_is_reissued(lab, tmp_path):
    config, name = issue(lab, tmp_path, "missing")
    paths = default_paths(tmp_path, name, "rsa")
    os.unlink(paths["chain"])
    result = run_acmebot(config, "--verbose")
    assert_ok(result)
    assert "is missing" in result.stdout
    check_issued(lab, paths, "rsa", [name])


def test_must_staple_change_reissues_once_even_though_pebble_drops_it(lab, tmp_path):
    config, name = issue(lab, tmp_path, "staple", {"settings": {"key_size": 0}})
    raw = json.loads(config.read_text())
    raw["certificates"][name]["ocsp_must_staple"] = True
    config.write_text(json.dumps(raw))
    result = run_acmebot(config, "--verbose")
    assert_ok(result)
    assert "ocsp_must_staple changed" in result.stdout
    # pebble drops the extension: asking again on every run would be a loop
    again = run_acmebot(config, "--verbose")
    assert_ok(again)
    assert "nothing to do" in again.stdout


# -- rollover --------------------------------------------------------------------------------------

def test_rollover_refused_while_backup_is_young_then_forced(lab, tmp_path):
    hook_out = tmp_path / "rollover-hook"
    config, name = issue(lab, tmp_path, "roll", {
        "settings": {"key_size": 0, "hpkp_days": 60},
        "directories": {"previous_key": str(tmp_path / "previous")},
        "hooks": {"private_key_rollover":
                  f"echo {{key_name}} {{key_type}} {{backup_key_file}} {{private_key_file}} "
                  f"{{previous_key_file}} >> {hook_out}"}})
    paths = default_paths(tmp_path, name, "ecdsa")
    old_primary = Path(paths["key"]).read_bytes()
    old_backup = Path(paths["backup"]).read_bytes()
    refused = run_acmebot(config, "--rollover")
    assert refused.returncode == 2
    assert_clean(refused)
    assert "refusing to roll over" in refused.stderr and "--force" in refused.stderr and "safe from" in refused.stderr
    assert Path(paths["key"]).read_bytes() == old_primary
    forced = run_acmebot(config, "--rollover", "--force")
    assert_ok(forced)
    assert "Rolled over private key" in forced.stdout
    assert Path(paths["key"]).read_bytes() == old_backup
    new_backup = Path(paths["backup"]).read_bytes()
    assert new_backup not in (old_backup, old_primary)
    assert (tmp_path / "previous" / f"{name}_previous.ecdsa.key").read_bytes() == old_primary
    check_issued(lab, paths, "ecdsa", [name])
    line = hook_out.read_text().split()
    assert line == [name, "ecdsa", str(paths["backup"]), str(paths["key"]),
                    str(tmp_path / "previous" / f"{name}_previous.ecdsa.key")]
    # the old primary is in the archive too
    assert any(p.read_bytes() == old_primary for p in (tmp_path / "archive" / name).rglob("*.key"))


def test_rollover_allowed_without_force_once_the_backup_is_hpkp_days_old(lab, tmp_path):
    # in process: the clock, not --force, makes the backup key old enough
    clock = FakeClock(real_sleep=True)
    lab.add_hosts("example.test", "rollage")
    name = "rollage.example.test"
    config = make_config(tmp_path, lab, {"settings": {"key_size": 0, "hpkp_days": 60},
                                         "certificates": {name: {}}})
    assert_ok(run_main(config, clock=clock))
    paths = default_paths(tmp_path, name, "ecdsa")
    old_backup = Path(paths["backup"]).read_bytes()
    clock.advance(days=59)
    refused = run_main(config, "--rollover", clock=clock)
    assert_clean(refused)
    assert refused.returncode == 2 and "only 59 days old" in refused.stderr
    safe = (clock() + datetime.timedelta(days=1)).strftime("%Y-%m-%d")
    assert f"safe from {safe}" in refused.stderr
    clock.advance(days=1)
    rolled = run_main(config, "--rollover", clock=clock)
    assert_ok(rolled)
    assert "Rolled over private key" in rolled.stdout
    assert Path(paths["key"]).read_bytes() == old_backup
    check_issued(lab, paths, "ecdsa", [name])


def test_backup_key_expiry_warns_or_rolls_over_automatically(lab, tmp_path):
    # in process: the clock moves 31 days on instead of the key state being backdated
    clock = FakeClock(real_sleep=True)
    lab.add_hosts("example.test", "expire")
    name = "expire.example.test"
    config = make_config(tmp_path, lab, {"settings": {"key_size": 0, "hpkp_days": 0, "expiration_days": 30},
                                         "certificates": {name: {}}})
    assert_ok(run_main(config, clock=clock))
    paths = default_paths(tmp_path, name, "ecdsa")
    old_backup = Path(paths["backup"]).read_bytes()
    clock.advance(days=29)
    assert_ok(run_main(config, clock=clock))                 # 29 days old: not yet
    clock.advance(days=2)
    warned = run_main(config, clock=clock)
    assert warned.returncode == 0
    assert "rollover" in warned.stderr and "31 days old" in warned.stderr
    raw = json.loads(config.read_text())
    raw["settings"]["auto_rollover"] = True
    config.write_text(json.dumps(raw))
    rolled = run_main(config, clock=clock)
    assert_ok(rolled)
    assert Path(paths["key"]).read_bytes() == old_backup
    check_issued(lab, paths, "ecdsa", [name])
    again = run_main(config, "--verbose", clock=clock)
    assert_ok(again)
    assert "nothing to do" in again.stdout


# -- revocation ------------------------------------------------------------------------------------

def test_revoke_requires_key_names(lab, tmp_path):
    config, _ = issue(lab, tmp_path, "revnames")
    result = run_acmebot(config, "--revoke")
    assert result.returncode == 2
    assert "--revoke needs the names" in result.stderr


def test_revoke_archives_and_next_run_rolls_over(lab, tmp_path):
    config, name = issue(lab, tmp_path, "revoke")
    rsa, ecdsa = default_paths(tmp_path, name, "rsa"), default_paths(tmp_path, name, "ecdsa")
    serials = {t: serial_of(p["certificate"]) for t, p in (("rsa", rsa), ("ecdsa", ecdsa))}
    backups = {t: Path(p["backup"]).read_bytes() for t, p in (("rsa", rsa), ("ecdsa", ecdsa))}
    result = run_acmebot(config, "--revoke", "--reason", "key-compromise", name)
    assert_ok(result)
    for key_type, serial in serials.items():
        status = lab.cert_status(serial)
        assert status["Status"] == "Revoked" and status["Reason"] == 1, status
    for paths in (rsa, ecdsa):
        for kind in ("certificate", "chain", "full_key", "key"):
            assert not Path(paths[kind]).exists(), paths[kind]
        assert Path(paths["backup"]).exists()
    archived = {p.name for p in (tmp_path / "archive" / name).rglob("*") if p.is_file()}
    assert {Path(rsa["certificate"]).name, Path(rsa["key"]).name, Path(ecdsa["full_key"]).name} <= archived
    nxt = run_acmebot(config)
    assert_ok(nxt)
    for key_type, paths in (("rsa", rsa), ("ecdsa", ecdsa)):
        assert Path(paths["key"]).read_bytes() == backups[key_type]
        check_issued(lab, paths, key_type, [name])


# -- master / follower -------------------------------------------------------------------------

def test_follower_issues_with_the_masters_account_and_authorizations(lab, tmp_path):
    lab.add_hosts("example.test", "follow", "unauth")
    master_dir, follower_dir = tmp_path / "master", tmp_path / "follower"
    master_dir.mkdir()
    follower_dir.mkdir()
    master = make_config(master_dir, lab, {"authorizations": {"example.test": ["follow"]}})
    assert_ok(run_acmebot(master))
    assert not (master_dir / "certs").exists()            # authorizations only, no certificate
    follower = make_config(follower_dir, lab, {
        "settings": {"follower_mode": True, "reload_zone_command": None},
        "zone_update_keys": None,
        "certificates": {"follow.example.test": {}, "unauth.example.test": {}}})
    raw = json.loads(follower.read_text())
    raw.pop("zone_update_keys")
    follower.write_text(json.dumps(raw))
    # without the master's account: a clear error
    result = run_acmebot(follower)
    assert result.returncode == 2 and "copy client_key.pem and registration.json" in result.stderr
    shutil.copytree(master_dir / "resource", follower_dir / "resource", dirs_exist_ok=True)
    result = run_acmebot(follower)
    assert_clean(result)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "unauth.example.test (rsa): not authorized for unauth.example.test" in result.stderr
    assert "master" in result.stderr, result.stdout + result.stderr
    for key_type in ("rsa", "ecdsa"):
        check_issued(lab, default_paths(follower_dir, "follow.example.test", key_type), key_type,
                     ["follow.example.test"])
        assert not Path(default_paths(follower_dir, "unauth.example.test", key_type)["certificate"]).exists()
    assert lab.txt("_acme-challenge.unauth.example.test") == []


# -- hooks and services -----------------------------------------------------------------------

def test_hooks_get_quoted_fields_and_services_reload_once(lab, tmp_path):
    lab.add_hosts("example.test", "hooka", "hookb")
    marker = tmp_path / "pwned"          # hooks run in the config's directory
    weird = tmp_path / "it's; touch pwned; $(touch pwned) `touch pwned`"
    os.symlink(lab.http_challenge_dir, weird)
    log = tmp_path / "hooks.log"
    services = tmp_path / "services.log"
    hooks = {name: f"printf '%s|' {name} " + " ".join(f"{{{f}}}" for f in fields) + f" >> {log}; echo >> {log}"
             for name, fields in {
                 "set_http_challenge": ("domain", "challenge_file"),
                 "clear_http_challenge": ("domain", "challenge_file"),
                 "set_dns_challenge": ("domain", "zone", "challenge"),
                 "clear_dns_challenge": ("domain", "zone", "challenge"),
                 "dns_zone_update": ("zone",),
                 "private_key_installed": ("key_name", "key_type", "private_key_file"),
                 "backup_key_installed": ("key_name", "key_type", "backup_key_file"),
                 "certificate_installed": ("key_name", "key_type", "certificate_name", "certificate_file"),
                 "chain_installed": ("key_name", "key_type", "certificate_name", "chain_file"),
                 "full_key_installed": ("key_name", "key_type", "certificate_name", "full_key_file"),
                 "params_installed": ("key_name", "certificate_name", "params_file"),
             }.items()}
    config = make_config(tmp_path, lab, {
        "settings": {"key_size": 0},
        "http_challenges": {"hooka.example.test": str(weird)},
        "services": {"web": f"echo reloaded >> {services}", "broken": "echo oops; exit 3"},
        "hooks": hooks,
        "private_keys": {"shared": {"certificates": {
            "hooka.example.test": {"services": ["web", "broken"]},
            "hookb.example.test": {"services": ["web"]}}}}})
    result = run_acmebot(config)
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    assert services.read_text() == "reloaded\n"                   # once, for two certificates
    assert "service broken reload" in result.stderr and "status 3" in result.stderr
    lines = [line.rstrip("|").split("|") for line in log.read_text().splitlines() if line]
    by_hook = {}
    for line in lines:
        by_hook.setdefault(line[0], []).append(line[1:])
    challenge_file = by_hook["set_http_challenge"][0][1]
    assert by_hook["set_http_challenge"][0][0] == "hooka.example.test"
    assert challenge_file.startswith(str(weird) + "/")
    assert by_hook["clear_http_challenge"][0] == by_hook["set_http_challenge"][0]
    assert by_hook["set_dns_challenge"][0][:2] == ["hookb.example.test", "example.test"]
    assert by_hook["dns_zone_update"][0] == ["example.test"]
    assert by_hook["private_key_installed"] == [["shared", "ecdsa",
                                                 str(default_paths(tmp_path, "shared", "ecdsa")["key"])]]
    assert by_hook["backup_key_installed"][0][2].endswith("shared_backup.ecdsa.key")
    installed = sorted(entry[2] for entry in by_hook["certificate_installed"])
    assert installed == ["hooka.example.test", "hookb.example.test"]
    for entry in by_hook["certificate_installed"]:
        assert entry[3] == str(default_paths(tmp_path, entry[2], "ecdsa")["certificate"])
    assert len(by_hook["chain_installed"]) == 2 and len(by_hook["full_key_installed"]) == 2
    assert len(by_hook["params_installed"]) == 2


def test_failing_hook_is_a_warning(lab, tmp_path):
    lab.add_hosts("example.test", "badhook")
    config = make_config(tmp_path, lab, {"settings": {"key_size": 0},
                                         "hooks": {"certificate_installed": "echo nope >&2; exit 7"},
                                         "certificates": {"badhook.example.test": {}}})
    result = run_acmebot(config)
    assert result.returncode == 0
    assert_clean(result)
    assert "hook certificate_installed" in result.stderr and "status 7: nope" in result.stderr
    check_issued(lab, default_paths(tmp_path, "badhook.example.test", "ecdsa"), "ecdsa", ["badhook.example.test"])


# -- running from cron: the lock ------------------------------------------------------------------

def _start(config, *args):
    return subprocess.Popen([sys.executable, str(ACMEBOT), "--config", str(config), "--accept-terms", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=config.parent,
                            env={k: v for k, v in os.environ.items() if k != "ACMEBOT_PASSPHRASE"})


def test_two_concurrent_runs_do_not_work_on_the_same_files(lab, tmp_path):
    lab.add_hosts("example.test", "lock1")
    config = make_config(tmp_path, lab, {"certificates": {"lock1.example.test": {}}})
    first, second = _start(config), _start(config)
    outs = [p.communicate(timeout=120) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outs
    issued = sum(out.count("Issued certificate lock1.example.test (rsa)") for out, _ in outs)
    assert issued == 1, outs                      # the second run found everything in place
    for key_type in ("rsa", "ecdsa"):
        check_issued(lab, default_paths(tmp_path, "lock1.example.test", key_type), key_type,
                     ["lock1.example.test"])


def test_lock_times_out_with_a_clear_message_and_survives_sigkill(lab, tmp_path):
    lab.add_hosts("example.test", "lock2")
    started = tmp_path / "started"
    config = make_config(tmp_path, lab, {
        "settings": {"lock_timeout": 1},
        "hooks": {"set_dns_challenge": f"touch {started}; sleep 60"},
        "certificates": {"lock2.example.test": {}}})
    slow = _start(config)
    deadline = time.time() + 60
    while not started.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert started.exists(), "the first run never reached its hook"
    blocked = run_acmebot(config)
    assert blocked.returncode == 6
    assert_clean(blocked)
    assert "another acmebot run holds" in blocked.stderr and str(slow.pid) in blocked.stderr
    slow.send_signal(signal.SIGKILL)
    slow.wait(timeout=30)
    raw = json.loads(config.read_text())
    raw.pop("hooks")
    config.write_text(json.dumps(raw))
    after = run_acmebot(config)
    assert_ok(after)
    check_issued(lab, default_paths(tmp_path, "lock2.example.test", "rsa"), "rsa", ["lock2.example.test"])


# -- batches below the CA's limit on pending authorizations -----------------------------------

def test_orders_go_in_batches_and_later_key_types_reuse_authorizations(lab, tmp_path):
    lab.add_hosts("example.test", "batch1", "www.batch1", "batch2", "www.batch2")
    names = {f"batch{i}.example.test": {"alt_names": {"example.test": [f"batch{i}", f"www.batch{i}"]}}
             for i in (1, 2)}
    config = make_config(tmp_path, lab, {"settings": {"max_pending_authorizations": 2},
                                         "certificates": names})
    result = run_acmebot(config, "--verbose")
    assert_ok(result)
    assert "batch 4 of 4" in result.stdout
    # rsa orders (first key type) answered 2 challenges each; the ecdsa orders reused them
    assert result.stdout.count("answering 2 challenges") == 2
    assert "answering" not in result.stdout.split("batch 3 of 4")[1]
    for name in names:
        for key_type in ("rsa", "ecdsa"):
            check_issued(lab, default_paths(tmp_path, name, key_type), key_type, [name, "www." + name])


def test_a_second_key_type_waits_for_the_first_and_reuses_its_authorizations(lab, tmp_path):
    """Without any batch limit, rsa and ecdsa of one certificate go in two
    waves: each name is validated once (pebble reuses valid authorizations,
    never pending ones), and a certificate with one key type is in the first."""
    lab.add_hosts("example.test", "wave1", "www.wave1", "wave2")
    config = make_config(tmp_path, lab, {"certificates": {
        "wave1.example.test": {"alt_names": {"example.test": ["wave1", "www.wave1"]}},
        "wave2.example.test": {"key_types": ["ecdsa"]}}})
    result = run_acmebot(config, "--verbose")
    assert_ok(result)
    assert "batch 1 of 2 (2 orders)" in result.stdout and "batch 2 of 2 (1 orders)" in result.stdout
    assert result.stdout.count("answering 3 challenges") == 1
    assert "answering" not in result.stdout.split("batch 2 of 2")[1]
    for key_type in ("rsa", "ecdsa"):
        check_issued(lab, default_paths(tmp_path, "wave1.example.test", key_type), key_type,
                     ["wave1.example.test", "www.wave1.example.test"])
    check_issued(lab, default_paths(tmp_path, "wave2.example.test", "ecdsa"), "ecdsa", ["wave2.example.test"])
