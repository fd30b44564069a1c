"""Secrets never leak (issue 9): passphrases, the EAB HMAC key, TSIG secrets and
private key material stay out of output, logs, child processes and files.

One certificate with a passphrase-protected key (key_passphrase true and
ACMEBOT_PASSPHRASE, a passphrase with ', ", $, spaces and a backslash), an EAB
account on a pebble that requires EAB, names validated by RFC 2136 with both
kinds of TSIG key file, by reload_zone_command and by http-01.  Every hook,
the service reload and reload_zone_command run tests/lab/hook_env.py, which records
its argv and environment and those of the `sh -c` shell that started it.  The
certificate is issued, renewed and its key rolled over, each run under strace,
once at --debug with log_level debug and once at --detail with log_level
detail.  Then:

* no secret is in stdout, stderr, the log file, any recorded argv or
  environment, any execve() of a child (from the strace trace: argv and
  environment of every process acmebot started), or any file but those meant
  to hold it;
* the {passphrase} field delivers the passphrase to a hook (the hook writes it
  with the shell builtin printf, so no process argument carries it);
* every file that ends up holding private key material was created with a
  mode that grants nothing to others, was never chmod'ed to one, and private
  directories were created 0700 or 0750.
"""

import base64
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from conftest import make_config
from lab import ACMEBOT, ZONES
from test_issue import KEY_TYPES, assert_ok, check_issued, default_paths
from test_units import ab     # the script imported as a module, for the in-process tests

HOOK_ENV = Path(__file__).resolve().parent / "lab" / "hook_env.py"
PASSPHRASE = "it's a \"pass\" $HOME \\ phrase"
EAB_KID = "secrets-kid"
EAB_KEY = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
NAME = "secpp.example.test"
PASSPHRASE_HOOKS = ("private_key_installed", "backup_key_installed", "previous_key_installed",
                    "private_key_rollover")
HOOK_FIELDS = {   # acmebot's HOOKS, as documented
    "set_dns_challenge": ("domain", "zone", "challenge"),
    "clear_dns_challenge": ("domain", "zone", "challenge"),
    "dns_zone_update": ("zone",),
    "set_http_challenge": ("domain", "challenge_file"),
    "clear_http_challenge": ("domain", "challenge_file"),
    "private_key_rollover": ("key_name", "key_type", "backup_key_file", "private_key_file", "previous_key_file"),
    "private_key_installed": ("key_name", "key_type", "private_key_file"),
    "backup_key_installed": ("key_name", "key_type", "backup_key_file"),
    "previous_key_installed": ("key_name", "key_type", "previous_key_file"),
    "hpkp_header_installed": ("key_name", "server", "header", "hpkp_file"),
    "certificate_installed": ("key_name", "key_type", "certificate_name", "certificate_file"),
    "full_certificate_installed": ("key_name", "key_type", "certificate_name", "full_certificate_file"),
    "chain_installed": ("key_name", "key_type", "certificate_name", "chain_file"),
    "full_key_installed": ("key_name", "key_type", "certificate_name", "full_key_file"),
    "params_installed": ("key_name", "certificate_name", "params_file"),
    "sct_installed": ("key_name", "key_type", "certificate_name", "ct_log_name", "sct_file"),
    "ocsp_installed": ("key_name", "key_type", "certificate_name", "ocsp_file"),
    "notify": ("certificate_name", "key_type", "not_after", "days_left", "problem", "event"),
}
TRACES = ("issue.trace", "renew.trace", "rollover.trace")
STRACE_CALLS = ("openat,open,creat,chmod,fchmod,fchmodat,mkdir,mkdirat,rename,renameat,renameat2,"
                "link,linkat,execve")


@pytest.fixture(scope="module")
def eab_pebble(lab):
    return lab.pebbles.get("sec-eab") or lab.start_pebble(
        "sec-eab", {"externalAccountBindingRequired": True, "externalAccountMACKeys": {EAB_KID: EAB_KEY}})


# -- the configuration ------------------------------------------------------------------------------

def q(*argv):
    return " ".join(shlex.quote(str(a)) for a in argv)


def hook_command(records, passfile, name):
    """hook_env.py with every field of the hook but the passphrase; a passphrase
    hook first appends {passphrase} to passfile with the builtin printf."""
    fields = " ".join(f"{f}={{{f}}}" for f in HOOK_FIELDS[name])
    record = f"{q(sys.executable, HOOK_ENV, records, name)} {fields}"
    if name in PASSPHRASE_HOOKS:
        return f"printf '%s\\n' {{passphrase}} >> {q(passfile)}; {record}"
    return record


def secrets_config(tmp_path, lab, eab_pebble, log_level):
    t = tmp_path / "t"
    t.mkdir(exist_ok=True)
    records, passfile = t / "records.jsonl", t / "passphrases.txt"
    lab.add_hosts("example.test", "secpp", "sechttp")
    lab.add_hosts("example.net", "secpp")
    lab.add_hosts("local.test", "secpp")
    reload_zone = f"{q(sys.executable, HOOK_ENV, records, 'reload_zone_command')} -- " + \
        lab.reload_zone_command(tmp_path / "challenge")
    for key_type in KEY_TYPES:
        (tmp_path / f"root_cert.{key_type}.pem").write_text(eab_pebble.root_pem())
    config = make_config(tmp_path, lab, {
        "account": {"email": "admin@example.test", "eab_kid": EAB_KID, "eab_hmac_key": EAB_KEY},
        "settings": {"acme_directory_url": eab_pebble.directory_url, "log_level": log_level,
                     "reload_zone_command": reload_zone},
        "directories": {"previous_key": str(tmp_path / "previous")},
        "services": {"websvc": q(sys.executable, HOOK_ENV, records, "service websvc")},
        "http_challenges": {"sechttp.example.test": str(lab.http_challenge_dir)},
        "hooks": {name: hook_command(records, passfile, name) for name in HOOK_FIELDS},
        "certificates": {NAME: {
            "key_passphrase": True, "services": ["websvc"],
            "alt_names": {"example.test": ["secpp", "sechttp"], "example.net": ["secpp"],
                          "local.test": ["secpp"]}}},
    })
    return config, records, passfile


# -- strace ------------------------------------------------------------------------------------------

def run_traced(config, trace, *args):
    """run_acmebot's command under strace (-y: file descriptors shown with their
    paths; -v -s: every execve() with its whole argv and environment)."""
    env = {k: v for k, v in os.environ.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    env.update(ACMEBOT_TEST_NETNS="1", ACMEBOT_PASSPHRASE=PASSPHRASE)
    argv = ["strace", "-f", "-y", "-v", "-s", "65536", "-e", f"trace={STRACE_CALLS}", "-o", str(trace),
            sys.executable, str(ACMEBOT), "--config", str(config), "--accept-terms", *args]
    return subprocess.run(argv, capture_output=True, text=True, cwd=config.parent, env=env, timeout=600)


_STRING = r'"((?:[^"\\]|\\.)*)"'


def _unescape(text):
    return re.sub(r"\\(x[0-9a-f]{2}|[0-7]{1,3}|.)",
                  lambda m: {"n": "\n", "t": "\t", "r": "\r"}.get(m.group(1), None)
                  or (chr(int(m.group(1)[1:], 16)) if m.group(1)[0] == "x" and len(m.group(1)) == 3
                      else chr(int(m.group(1), 8)) if m.group(1)[0] in "01234567" else m.group(1)),
                  text)


def strace_lines(trace):
    """Complete syscall lines (`<unfinished ...>` joined with `<... resumed>`)."""
    pending, lines = {}, []
    for raw in Path(trace).read_text(errors="replace").splitlines():
        pid, text = re.match(r"(\d+)\s+(.*)", raw).groups()     # strace pads short pids
        if text.endswith("<unfinished ...>"):
            pending[pid] = text[: -len("<unfinished ...>")].rstrip()
            continue
        resumed = re.match(r"<\.\.\. \w+ resumed>(.*)", text)
        if resumed:
            text = pending.pop(pid, "") + resumed.group(1)
        lines.append((pid, text))
    return lines


def file_events(trace, cwd):
    """(call, [paths], mode or None) of every successful file call."""
    events = []
    for _, text in strace_lines(trace):
        match = re.match(r"(\w+)\((.*)\)\s+=\s+(-?\d+)", text, re.S)
        if not match or match.group(3).startswith("-") or match.group(1) == "execve":
            continue
        call, args = match.group(1), match.group(2)
        paths = [os.path.normpath(os.path.join(cwd, _unescape(s))) for s in re.findall(_STRING, args)]
        paths += [_unescape(p) for p in re.findall(r"\d+<(/[^>]*)>", args)]   # -y: fd<path>
        mode = None
        if call in ("open", "openat", "creat"):
            if call != "creat" and "O_CREAT" not in args:
                continue
            mode = re.search(r",\s*(0[0-7]+)\s*$", args)
        elif call in ("chmod", "fchmod", "fchmodat", "mkdir", "mkdirat"):
            mode = re.search(r",\s*(0[0-7]*)\s*$", args)
        mode = int(mode.group(1), 8) if mode else None
        events.append((call, paths, mode))
    return events


def execs(trace):
    """The execve() lines of every process but the first (acmebot itself)."""
    lines = [text for _, text in strace_lines(trace) if text.startswith("execve(")]
    return lines[1:]


def strace_form(secret):
    return secret.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# -- secrets and where they may be -------------------------------------------------------------------

def tsig_secrets(lab):
    return [base64.b64encode(lab.keys[ZONES[zone]].secret).decode() for zone in ("example.test", "example.net")]


def account_key_material(tmp_path):
    """Forms of the account private key: its PEM body lines and the JWK 'd'."""
    pem = (tmp_path / "resource" / "client_key.pem").read_bytes()
    key = serialization.load_pem_private_key(pem, None)
    numbers = key.private_numbers()
    if hasattr(numbers, "private_value"):       # EC
        value, size = numbers.private_value, (key.curve.key_size + 7) // 8
    else:                                        # RSA
        value, size = numbers.d, (key.key_size + 7) // 8
    d = base64.urlsafe_b64encode(value.to_bytes(size, "big")).decode().rstrip("=")
    return [d] + pem_lines(pem.decode())


def pem_lines(pem):
    """The full-length base64 lines of a PEM block (short ones could match by chance)."""
    return [line for line in pem.splitlines() if len(line) == 64]


def unencrypted_key_material(tmp_path):
    """The lines of each certificate key in clear PKCS#8 PEM (it is stored
    encrypted, so they must appear nowhere)."""
    out = []
    for path in list((tmp_path / "private").glob("*.key")) + list((tmp_path / "previous").glob("*.key")):
        key = serialization.load_pem_private_key(path.read_bytes(), PASSPHRASE.encode())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        out += pem_lines(pem)
    return out


def forms(secret):
    """How a secret may look once quoted: as is, shell-quoted (which splits it
    at each '), JSON-escaped, and escaped by strace."""
    plain = {secret, shlex.quote(secret)} | {part for part in secret.split("'") if len(part) >= 8}
    return {f for p in plain for f in (p, strace_form(p), json.dumps(p)[1:-1])}


def assert_nowhere(text, where, secret_list):
    for secret in secret_list:
        for form in forms(secret):
            assert form not in text, f"a secret ({secret[:6]}...) appears in {where}: {form!r}"


def files_holding(tmp_path, needle):
    skip = tmp_path / "t"
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")
                  if p.is_file() and skip not in p.parents and needle.encode() in p.read_bytes())


# -- the test ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("level", ["debug", "detail"])
def test_no_secret_leaks_through_issue_renew_and_rollover(lab, eab_pebble, tmp_path, level):
    """Every run at --debug or --detail, with the same log_level in the log file."""
    config, records, passfile = secrets_config(tmp_path, lab, eab_pebble, level)
    t = tmp_path / "t"
    outputs = []

    # 1. issuance, under strace
    result = run_traced(config, t / "issue.trace", f"--{level}")
    assert_ok(result)
    for key_type in KEY_TYPES:
        check_issued(lab, default_paths(tmp_path, NAME, key_type), key_type,
                     [NAME, "sechttp.example.test", "secpp.example.net", "secpp.local.test"],
                     passphrase=PASSPHRASE, root=True, pebble=eab_pebble)
    outputs.append(("issue", result))
    first_keys = {kt: default_paths(tmp_path, NAME, kt)["key"].read_bytes() for kt in KEY_TYPES}

    # 2. renewal, under strace
    result = run_traced(config, t / "renew.trace", f"--{level}", "--renew")
    assert_ok(result)
    assert "Issued certificate" in result.stdout
    outputs.append(("renew", result))

    # 3. rollover, under strace
    result = run_traced(config, t / "rollover.trace", f"--{level}", "--rollover", "--force")
    assert_ok(result)
    assert "Rolled over private key" in result.stdout
    outputs.append(("rollover", result))
    for key_type in KEY_TYPES:
        assert default_paths(tmp_path, NAME, key_type)["key"].read_bytes() != first_keys[key_type]

    log_text = (tmp_path / "log" / "acmebot.log").read_text()
    assert f" {level.upper()} " in log_text
    assert "JWS payload" in log_text                    # the ACME traffic, in the file
    assert ("JWS payload" in outputs[0][1].stdout) == (level == "detail")   # and on the console
    assert "hook private_key_installed:" in log_text

    # what the hooks, the service reload and reload_zone_command saw
    recorded = [json.loads(line) for line in records.read_text().splitlines()]
    labels = {r["label"] for r in recorded}
    assert {"set_dns_challenge", "clear_dns_challenge", "set_http_challenge", "clear_http_challenge",
            "certificate_installed", "chain_installed", "full_key_installed", "full_certificate_installed",
            "params_installed", "hpkp_header_installed", "reload_zone_command", "service websvc",
            *PASSPHRASE_HOOKS} <= labels, labels
    assert any(r.get("parent_argv") for r in recorded)     # at least some shells were seen
    for r in recorded:
        assert "ACMEBOT_PASSPHRASE" not in r["env"] and "ACMEBOT_PASSPHRASE" not in (r.get("parent_env") or [])
    rollover = [r for r in recorded if r["label"] == "private_key_rollover"]
    assert sorted(r["fields"]["key_type"] for r in rollover) == sorted(KEY_TYPES)

    # the {passphrase} field delivered the passphrase, once per call, intact
    delivered = passfile.read_text().splitlines()
    calls = sum(1 for r in recorded if r["label"] in PASSPHRASE_HOOKS)
    assert delivered == [PASSPHRASE] * calls and calls >= 6

    secret_list = [PASSPHRASE, EAB_KEY, *tsig_secrets(lab), *account_key_material(tmp_path),
                   *unencrypted_key_material(tmp_path)]
    for what, result in outputs:
        assert_nowhere(result.stdout, f"stdout of the {what} run", secret_list)
        assert_nowhere(result.stderr, f"stderr of the {what} run", secret_list)
    assert_nowhere(log_text, "the log file", secret_list)
    assert_nowhere(records.read_text(), "a hook's argv or environment", secret_list)
    for trace in TRACES:
        child_execs = execs(t / trace)
        assert any("hook_env.py" in line for line in child_execs)
        assert any(line.startswith('execve("/bin/sh"') for line in child_execs)
        assert_nowhere("\n".join(child_execs), f"the argv or environment of a child process ({trace})",
                       secret_list)

    # files: the passphrase, the EAB key and clear key material in none; the
    # EAB key only in the config; the account key only in client_key.pem
    for secret in [PASSPHRASE, *tsig_secrets(lab), *unencrypted_key_material(tmp_path)]:
        assert files_holding(tmp_path, secret) == []
    assert files_holding(tmp_path, EAB_KEY) == ["acmebot.json"]
    jwk_d, *pem_body = account_key_material(tmp_path)
    assert files_holding(tmp_path, jwk_d) == []
    for line in pem_body:
        assert files_holding(tmp_path, line) == ["resource/client_key.pem"]

    # modes: from the strace traces of the three runs
    check_modes(tmp_path, [t / trace for trace in TRACES])


def private_files(tmp_path):
    """Files that ended up holding private key material, and the key state."""
    skip = tmp_path / "t"
    out = {str(p) for p in tmp_path.rglob("*")
           if p.is_file() and skip not in p.parents and b"PRIVATE KEY-----" in p.read_bytes()}
    out |= {str(p) for p in (tmp_path / "resource" / "keys").glob("*.json")}
    return out


ARCHIVE_STAMP = re.compile(r"/archive/[^/]+/\d{4}_\d{2}_\d{2}_\d{6}$")   # where archived keys go
MOVES = ("rename", "renameat", "renameat2", "link", "linkat")


def check_modes(tmp_path, traces):
    targets = private_files(tmp_path)
    expected = {"private/secpp.example.test.rsa.key", "private/secpp.example.test_backup.rsa.key",
                "private/secpp.example.test_full.rsa.key", "resource/client_key.pem",
                f"resource/keys/{NAME}.json", "previous/secpp.example.test_previous.ecdsa.key"}
    assert {str(Path(p).relative_to(tmp_path)) for p in targets} >= expected
    assert any("/archive/" in p for p in targets)
    private_dirs = {str(tmp_path / d) for d in ("private", "previous", "resource", "resource/keys", "tmp")}
    checked, dirs_seen = 0, set()
    for trace in traces:
        events = file_events(trace, str(tmp_path))
        names = set(targets)
        for call, paths, _ in reversed(events):    # every name a target had: temps, link sources
            if call in MOVES and len(paths) == 2 and paths[1] in names:
                names.add(paths[0])
        for call, paths, mode in events:
            if call in ("mkdir", "mkdirat"):
                path = paths[-1]
                if path in private_dirs or ARCHIVE_STAMP.search(path):
                    dirs_seen.add(path)
                    assert mode in (0o700, 0o750), f"{call} {path} with mode {oct(mode)}"
                continue
            if call in MOVES or not any(p in names for p in paths):
                continue
            assert mode is not None, f"{call} {paths}: mode not understood"
            assert mode & 0o007 == 0, f"{call} {paths} grants {oct(mode)} to others"
            checked += 1
    assert checked >= len(targets)          # every target file was seen being created
    assert {str(tmp_path / "private"), str(tmp_path / "resource"), str(tmp_path / "previous")} <= dirs_seen
    assert any(ARCHIVE_STAMP.search(d) for d in dirs_seen)


# -- in process: the pieces behind the run above ------------------------------------------------------


UNIT_SECRET = "un'ique \"unit\" $SECRET \\ word"


@pytest.fixture
def console(capsys):
    """capsys, with acmebot's handlers removed afterwards (a test calls
    setup_console itself: sys.stdout is capsys's only while the test runs)."""
    ab.REDACTOR.add(UNIT_SECRET)
    yield capsys
    for handler in list(ab.log.handlers):
        ab.log.removeHandler(handler)
        handler.close()


def test_quoted_forms_of_a_secret_are_redacted():
    ab.REDACTOR.add(UNIT_SECRET)
    for form in (UNIT_SECRET, shlex.quote(UNIT_SECRET), json.dumps(UNIT_SECRET), repr(UNIT_SECRET)):
        shown = ab.REDACTOR.redact(f"hook x: run {form} now")
        assert "unit" not in shown and "********" in shown, shown


def test_debug_prints_the_traceback_redacted_on_the_console_and_in_the_log_file(console, tmp_path):
    log_path = tmp_path / "log" / "acmebot.log"
    ab.setup_console(logging.DEBUG, False)
    ab.setup_log_file(str(log_path), logging.DEBUG)
    try:
        raise ValueError(f"cannot use {UNIT_SECRET}")
    except ValueError:
        ab.log.debug("traceback", exc_info=True)
    out = console.readouterr().out
    text = log_path.read_text()
    for where in (out, text):
        assert "Traceback (most recent call last):" in where
        assert "ValueError: cannot use ********" in where
        assert "unit" not in where


def test_child_processes_get_no_secret_in_their_environment(monkeypatch):
    ab.REDACTOR.add(UNIT_SECRET)
    monkeypatch.setenv("ACMEBOT_PASSPHRASE", "another passphrase")
    monkeypatch.setenv("SOME_TOKEN", f"x{UNIT_SECRET}y")
    monkeypatch.setenv("HARMLESS", "/usr/local/bin")
    env = ab.child_env()
    assert "ACMEBOT_PASSPHRASE" not in env and "SOME_TOKEN" not in env
    assert env["HARMLESS"] == "/usr/local/bin"
    shown = subprocess.run(["env"], env=env, capture_output=True, text=True, check=True).stdout
    assert "another passphrase" not in shown and "unit" not in shown


def test_passphrase_field_reaches_the_hook_but_not_its_argv_env_or_stdin(console, tmp_path, monkeypatch):
    """The hook uses {passphrase} twice (a pipe read once would give it once);
    a trailing newline survives; the `sh -c` line and environment (read from
    /proc by the hook itself) hold no passphrase; the hook's stdin is empty."""
    secret = UNIT_SECRET + "\n"
    monkeypatch.setenv("ACMEBOT_PASSPHRASE", secret)
    out = tmp_path / "out"
    out.mkdir()
    command = (f"printf '%s' {{passphrase}} > {out}/one; printf '%s' {{passphrase}} > {out}/two; "
               f"cat /proc/$$/cmdline > {out}/argv; cat /proc/$$/environ > {out}/env; cat > {out}/stdin; "
               f"echo {{key_name}} > {out}/name")
    config_path = tmp_path / "acmebot.json"
    config_path.write_text(json.dumps({"hooks": {"private_key_installed": command,
                                                 "backup_key_installed": f"cat > {out}/plain-stdin"}}))
    config = ab.load_config(str(config_path))
    ab.setup_console(logging.DEBUG, False)
    ab.run_hook(config, "private_key_installed", key_name="k1", key_type="rsa", private_key_file="/x",
                passphrase=secret)
    assert (out / "one").read_text() == secret and (out / "two").read_text() == secret
    assert (out / "name").read_text() == "k1\n"
    for name in ("argv", "env", "stdin"):
        text = (out / name).read_bytes().decode()
        assert "unit" not in text, name
    assert "${acmebot_passphrase}" in (out / "argv").read_bytes().decode()
    assert (out / "stdin").read_text() == ""
    ab.run_hook(config, "backup_key_installed", key_name="k1", key_type="rsa", backup_key_file="/y",
                passphrase=secret)
    assert (out / "plain-stdin").read_text() == ""
    logged = console.readouterr()
    assert "unit" not in logged.out + logged.err


def test_openssl_for_random_dh_parameters_gets_no_secret(tmp_path, monkeypatch):
    """An `openssl` first on PATH records its environment, then runs the real one."""
    real = shutil.which("openssl")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "openssl"
    wrapper.write_text(f'#!/bin/sh\nenv > {shlex.quote(str(tmp_path / "env"))}\nexec {shlex.quote(real)} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("ACMEBOT_PASSPHRASE", UNIT_SECRET)
    pem = ab.dhparam_pem(1024, random_params=True)
    assert pem.startswith(b"-----BEGIN DH PARAMETERS-----")
    env = (tmp_path / "env").read_text()
    assert f"PATH={bin_dir}:" in env and "ACMEBOT_PASSPHRASE" not in env and "unit" not in env
