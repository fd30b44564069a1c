#!/usr/bin/env python3
"""Kill campaign (issue 9): acmebot is SIGKILLed while it rewrites files, then one plain run
must leave everything consistent.

    sudo python3 tests/lab/killcampaign.py --kills 200        # figures on stdout, exit 1 on any failure
    python3 tests/lab/killcampaign.py --help

Standalone, the script moves into a loopback-only network namespace (lab.isolate_network,
as the tests do) and starts its own lab (lab.Lab: BIND, nginx, pebble).  tests/test_crash.py
runs a short campaign with the same code on the pytest session's lab.

Set-up: a private key `<p>shared` holding two certificates (one validated by dns-01 through
the lab's BIND, one by http-01 through nginx) and a certificate `<p>solo.example.net` with its
own key (dns-01, the zone whose update key is the old K*.key/.private pair); both key types
(RSA and ECDSA) and backup keys everywhere.  A first run issues everything.

The runs that rewrite files, alternated (KINDS):
  renew     `--renew`: every certificate, chain and full_key file is rewritten;
  rollover  `--rollover --force`: backup keys become primary keys, new backup keys, every
            certificate reissued;
  reissue   a certificate file is deleted (a different one each time), then a plain run.

Ways to kill:
  random    the run is started in its own process group, which gets SIGKILL at an instant
            drawn uniformly from [0, d], d being the measured duration of that kind of run
            (most such instants fall before the files are written: see the figures);
  rename N  `strace -f -e inject=rename,renameat,renameat2:signal=KILL:when=N`: the process
            is killed on entering its Nth rename, so the state is the one after N-1 renames
            (Python's os.replace is rename(2) on x86-64; strace counts per syscall and per
            process).  N = 1..(renames in a run of that kind), counted by a traced run first;
  link N    the same at the Nth link/linkat: the archive's hard links, made after the temp
            files (and the journal) are written and before the first rename.

After every kill:
  invariant  no certificate on disk without its private key somewhere on disk: the public
             key of every certificate file (and of the certificate in every full_key file)
             is that of the primary key file, the backup key file, or a key in the archive;
  recovery   a plain run exits 0 and leaves every certificate file matching its primary key
             file, every full_key file = primary key + certificate file, every chain file
             holding the certificate's issuer (signature verified), certificate file =
             leaf + chain (+ parameters), backup keys different from primary keys, the key
             state file naming the keys that are on disk, no `.acmebot-*` temp file anywhere,
             no journal left in <resource>/journal/;
  stable     a second plain run changes nothing (every file byte-identical, same modes).
A failure is recorded with what was found, and the directories are reset (keys, certificates
and archive removed, everything issued anew) so that the campaign goes on.
"""

import argparse
import base64
import collections
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # tests/: the lab package

from cryptography import x509  # noqa: E402
from cryptography.exceptions import InvalidSignature  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402

from lab import (REQUIRED_BINARIES, Lab, LabError, acmebot_command, isolate_network,  # noqa: E402
                 make_config)

KEY_TYPES = ("rsa", "ecdsa")
KINDS = {
    "renew": ("--renew",),
    "rollover": ("--rollover", "--force"),
    "reissue": (),
}
KIND_LABELS = {"renew": "--renew", "rollover": "--rollover --force",
               "reissue": "plain run after deleting a certificate file"}
# the syscalls a kill can be injected at: name in the figures -> syscalls strace counts
SYSCALL_KILLS = {"rename": ("rename", "renameat", "renameat2"), "link": ("link", "linkat")}
RUN_TIMEOUT = 300
TEMP_MARK = ".acmebot-"
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\n.+?\n-----END CERTIFICATE-----\n", re.S)
_PEM_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----\n.+?\n-----END [A-Z ]*PRIVATE KEY-----\n", re.S)


def cert_blocks(data):
    return _PEM_CERT.findall(data)


def spki(obj):
    public = obj.public_key() if hasattr(obj, "public_key") else obj
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_spki(data):
    """SubjectPublicKeyInfo DER of the (unencrypted) private key in data, or None."""
    match = _PEM_KEY.search(data)
    if not match:
        return None
    try:
        return spki(serialization.load_pem_private_key(match.group(0), None))
    except (ValueError, TypeError):
        return None


def leaf_spki(data):
    blocks = cert_blocks(data)
    if not blocks:
        return None
    try:
        return spki(x509.load_pem_x509_certificate(blocks[0]))
    except ValueError:
        return None


def read(path):
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


def file_state(root):
    """{relative path: (mode, bytes)} of every file but the log, the run lock and
    the quiet record (resource/quiet.json, which a run with nothing to do leaves)."""
    root = Path(root)
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not path.is_symlink() and rel.parts[0] not in ("log", "run") \
                and rel != Path("resource/quiet.json"):
            out[str(rel)] = (path.stat().st_mode, path.read_bytes())
    return out


def describe_changes(before, after):
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    parts = []
    for label, paths in (("added", added), ("removed", removed), ("changed", changed)):
        if paths:
            parts.append(f"{label}: {', '.join(paths[:6])}" + (f" (+{len(paths) - 6})" if len(paths) > 6 else ""))
    return "; ".join(parts)


@dataclasses.dataclass
class Kill:
    """One kill and what followed it."""
    number: int
    kind: str
    how: str                    # "random", or a SYSCALL_KILLS name: "rename", "link"
    at: float = 0.0             # random: seconds after the start; else N
    duration: float = 0.0       # random: the kind's measured duration
    killed: bool = False        # False: the run ended before the kill
    changed_at_kill: int = 0    # files that differed from before the run, right after the kill
    temps_at_kill: int = 0
    journals_at_kill: int = 0
    problems: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def label(self):
        if self.how == "random":
            where = f"random kill at {self.at:.2f} s of {self.duration:.2f} s"
        else:
            where = f"kill at {self.how} {int(self.at)}"
        return f"kill #{self.number} ({where}) of a {KIND_LABELS[self.kind]}"


class Campaign:
    """The directories, config and checks of one campaign under `root` on `lab`'s servers."""

    def __init__(self, lab, root, *, prefix="kc", seed=None, pebble=None, log=None):
        self.lab = lab
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.rng = random.Random(seed)
        self.seed = seed
        self.log = log or (lambda message: None)
        p = prefix
        lab.add_hosts("example.test", f"{p}dns", f"www.{p}dns", f"{p}web")
        lab.add_hosts("example.net", f"{p}solo")
        # key name -> certificate names
        self.keys = {
            f"{p}shared": [f"{p}dns.example.test", f"{p}web.example.test"],
            f"{p}solo.example.net": [f"{p}solo.example.net"],
        }
        self.certificates = [name for names in self.keys.values() for name in names]
        overrides = {
            "settings": {"log_level": "debug"},
            "http_challenges": {f"{p}web.example.test": str(lab.http_challenge_dir)},
            "private_keys": {f"{p}shared": {"certificates": {
                f"{p}dns.example.test": {"alt_names": {"example.test": [f"{p}dns", f"www.{p}dns"]}},
                f"{p}web.example.test": {},
            }}},
            "certificates": {f"{p}solo.example.net": {}},
        }
        if pebble is not None:
            overrides["settings"]["acme_directory_url"] = pebble.directory_url
        self.config = make_config(self.root, lab, overrides)
        self.config_data = json.loads(self.config.read_text())
        self.durations = {}         # kind -> seconds of an unkilled run
        self.syscalls = {}          # (kind, "rename"/"link") -> (count, [file names], per-process counts)
        self.kills = []
        self.resets = 0
        self.started = time.monotonic()
        self._reissue_turn = 0

    # -- paths ------------------------------------------------------------------------
    def path(self, kind, **fields):
        """Where the config puts a file (the default file names of acmebot)."""
        directory = Path(self.config_data["directories"][kind])
        names = {
            "private_key": "{name}.{key_type}.key", "backup_key": "{name}_backup.{key_type}.key",
            "certificate": "{name}.{key_type}.pem", "chain": "{name}_chain.{key_type}.pem",
            "full_key": "{name}_full.{key_type}.key",
        }
        return directory / names[kind].format(**fields)

    @property
    def resource(self):
        return Path(self.config_data["directories"]["resource"])

    @property
    def archive(self):
        return Path(self.config_data["directories"]["archive"])

    def journal_files(self):
        journal = self.resource / "journal"
        if not journal.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in journal.rglob("*") if p.is_file())

    def temp_files(self):
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob(f"*{TEMP_MARK}*"))

    @staticmethod
    def by_directory(paths):
        """Leftover temp files, short: 'tmp/*.acmebot-* (8), certs/*.acmebot-* (1)'."""
        groups = collections.Counter(str(Path(p).parent) for p in paths)
        return ", ".join(f"{d}/*{TEMP_MARK}* ({n})" for d, n in sorted(groups.items()))

    # -- running acmebot ----------------------------------------------------------------
    @property
    def output_dir(self):
        """Where the killed runs' output and strace's logs go: the log directory, which
        file_state() leaves out."""
        directory = self.root / "log"
        directory.mkdir(exist_ok=True)
        return directory

    def command(self, kind):
        return acmebot_command(self.config, *KINDS[kind])

    def run(self, *args, timeout=RUN_TIMEOUT):
        argv, env, cwd = acmebot_command(self.config, *args)
        return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)

    def prepare(self, kind):
        """Before a run of `kind`: a reissue run needs a certificate file deleted."""
        if kind == "reissue":
            name = self.certificates[self._reissue_turn % len(self.certificates)]
            key_type = KEY_TYPES[(self._reissue_turn // len(self.certificates)) % 2]
            self._reissue_turn += 1
            self.path("certificate", name=name, key_type=key_type).unlink(missing_ok=True)

    def _popen(self, argv, env, cwd, out):
        return subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, process_group=0)

    @staticmethod
    def _kill_group(process):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def timed_run(self, kind):
        """An unkilled run of kind; returns its duration (and checks that it worked)."""
        self.prepare(kind)
        started = time.monotonic()
        result = self.run(*KINDS[kind])
        seconds = time.monotonic() - started
        if result.returncode != 0:
            raise CampaignError(f"a {KIND_LABELS[kind]} without a kill failed (exit {result.returncode}):\n"
                                f"{result.stdout}{result.stderr}")
        return seconds

    def setup(self):
        """The first issuance; then the duration of each kind of run."""
        result = self.run()
        if result.returncode != 0:
            raise CampaignError(f"the first run failed (exit {result.returncode}):\n{result.stdout}{result.stderr}")
        problems = self.consistency_problems()
        if problems:
            raise CampaignError("after the first run: " + "; ".join(problems))
        for kind in KINDS:
            self.durations[kind] = self.timed_run(kind)
            self.log(f"a {KIND_LABELS[kind]} takes {self.durations[kind]:.2f} s")

    def count_syscalls(self, kind):
        """Runs `kind` once under strace; records, for renames and links, how many the
        process that makes the most of one syscall makes (strace's `when=` counts per
        process and per syscall)."""
        self.prepare(kind)
        traced = ",".join(name for names in SYSCALL_KILLS.values() for name in names)
        with tempfile.NamedTemporaryFile(prefix="strace-", suffix=".log", dir=self.output_dir) as trace:
            argv, env, cwd = self.command(kind)
            result = subprocess.run(["strace", "-f", "-qq", "-o", trace.name, "-e", f"trace={traced}", *argv],
                                    env=env, cwd=cwd, capture_output=True, text=True, timeout=RUN_TIMEOUT)
            if result.returncode != 0:
                raise CampaignError(f"a traced {KIND_LABELS[kind]} failed (exit {result.returncode}):\n"
                                    f"{result.stdout}{result.stderr}")
            lines = Path(trace.name).read_text().splitlines()
        for target, names in SYSCALL_KILLS.items():
            per_process = collections.Counter()
            files = []
            for line in lines:
                match = re.match(r'^(\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+)', line)
                if not match or match.group(2) not in names:
                    continue
                per_process[(match.group(1), match.group(2))] += 1
                paths = re.findall(r'"([^"]*)"', match.group(3))
                files.append(f"{Path(paths[-1]).name if paths else '?'}")
            self.syscalls[(kind, target)] = (max(per_process.values(), default=0), files, dict(per_process))

    # -- kills --------------------------------------------------------------------------
    def random_kill(self, kind):
        duration = self.durations[kind]
        kill = Kill(len(self.kills) + 1, kind, "random", self.rng.uniform(0, duration), duration)
        self.prepare(kind)
        before = file_state(self.root)
        argv, env, cwd = self.command(kind)
        started = time.monotonic()
        with open(self.output_dir / "killed-run.out", "wb") as out:
            process = self._popen(argv, env, cwd, out)
            try:
                process.wait(timeout=kill.at)
                kill.killed = False
            except subprocess.TimeoutExpired:
                self._kill_group(process)
                process.wait()
                kill.killed = process.returncode == -signal.SIGKILL
            self._kill_group(process)     # anything it started
        self._after_kill(kill, before, started)
        return kill

    def syscall_kill(self, kind, target, n):
        """SIGKILL on entering the nth call of a SYSCALL_KILLS[target] syscall."""
        kill = Kill(len(self.kills) + 1, kind, target, n)
        self.prepare(kind)
        before = file_state(self.root)
        argv, env, cwd = self.command(kind)
        started = time.monotonic()
        # (no "-e trace=none": strace then ignores the injection)
        strace = ["strace", "-f", "-qq", "-o", "/dev/null",
                  "-e", f"inject={','.join(SYSCALL_KILLS[target])}:signal=KILL:when={n}"]
        with open(self.output_dir / "killed-run.out", "wb") as out:
            process = self._popen(strace + argv, env, cwd, out)
            try:
                process.wait(timeout=RUN_TIMEOUT)
            finally:
                self._kill_group(process)
                process.wait()
        # strace exits with its tracee's status: killed by SIGKILL (or 128 + 9)
        kill.killed = process.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL)
        self._after_kill(kill, before, started)
        return kill

    def _after_kill(self, kill, before, started):
        at_kill = file_state(self.root)
        archive = str(self.archive.relative_to(self.root))
        kill.changed_at_kill = sum(1 for p in set(before) | set(at_kill) if before.get(p) != at_kill.get(p)
                                   and TEMP_MARK not in p and "/journal/" not in f"/{p}"
                                   and not p.startswith(archive + "/"))
        kill.temps_at_kill = len(self.temp_files())
        kill.journals_at_kill = len(self.journal_files())
        kill.problems += [f"after the kill: {p}" for p in self.invariant_problems()]
        result = self.run()
        if result.returncode != 0 or "Traceback" in result.stdout + result.stderr:
            tail = " | ".join((result.stdout + result.stderr).strip().splitlines()[-3:])
            kill.problems.append(f"the recovery run exited {result.returncode}: {tail}")
        else:
            kill.problems += [f"after the recovery run: {p}" for p in self.consistency_problems()]
            settled = file_state(self.root)
            again = self.run()
            if again.returncode != 0:
                kill.problems.append(f"the second plain run exited {again.returncode}")
            changes = describe_changes(settled, file_state(self.root))
            if changes:
                kill.problems.append(f"the second plain run changed files: {changes}")
        kill.seconds = time.monotonic() - started
        self.kills.append(kill)
        status = "ok" if not kill.problems else "FAILED: " + " / ".join(kill.problems)
        self.log(f"{kill.label}: {'killed' if kill.killed else 'not killed (run ended first)'}, "
                 f"{kill.changed_at_kill} files changed at the kill; {status}")
        if kill.problems:
            self.reset()

    def reset(self):
        """Back to a consistent state after a failure: every key, certificate and the
        archive removed, everything issued anew (the ACME account is kept)."""
        self.resets += 1
        directories = self.config_data["directories"]
        for kind in ("private_key", "backup_key", "full_key", "certificate", "chain", "archive", "param"):
            shutil.rmtree(directories[kind], ignore_errors=True)
        for sub in ("keys", "journal"):
            shutil.rmtree(self.resource / sub, ignore_errors=True)
        for path in self.temp_files():
            (self.root / path).unlink(missing_ok=True)
        result = self.run()
        if result.returncode != 0 or self.consistency_problems():
            raise CampaignError(f"cannot get back to a consistent state after a failure (exit "
                                f"{result.returncode}): {self.consistency_problems()}\n{result.stdout}{result.stderr}")

    # -- checks -------------------------------------------------------------------------
    def key_files(self):
        """{description: spki} of every private key on disk that may own a certificate:
        primary and backup key files and every key in the archive."""
        out = {}
        for key_name in self.keys:
            for key_type in KEY_TYPES:
                for which in ("private_key", "backup_key"):
                    path = self.path(which, name=key_name, key_type=key_type)
                    data = read(path)
                    if data and (public := key_spki(data)):
                        out[str(path.relative_to(self.root))] = public
        if self.archive.is_dir():
            for path in self.archive.rglob("*"):
                if path.is_file() and (public := key_spki(path.read_bytes())):
                    out[str(path.relative_to(self.root))] = public
        return out

    def invariant_problems(self):
        """No certificate on disk without its private key somewhere on disk."""
        known = set(self.key_files().values())
        problems = []
        for name in self.certificates:
            for key_type in KEY_TYPES:
                for kind in ("certificate", "full_key"):
                    path = self.path(kind, name=name, key_type=key_type)
                    data = read(path)
                    if data is None:
                        continue
                    public = leaf_spki(data)
                    rel = path.relative_to(self.root)
                    if public is None:
                        problems.append(f"{rel} holds no certificate")
                    elif public not in known:
                        problems.append(f"the certificate in {rel} matches no private key on disk "
                                        f"(primary, backup or archive)")
        return problems

    def consistency_problems(self):
        problems = []
        for key_name, cert_names in self.keys.items():
            state_data = read(self.resource / "keys" / f"{key_name}.json")
            try:
                state = json.loads(state_data) if state_data else None
            except ValueError:
                state = None
                problems.append(f"the key state of {key_name} is not JSON")
            if state_data is None:
                problems.append(f"the key state of {key_name} is missing")
            for key_type in KEY_TYPES:
                primary_path = self.path("private_key", name=key_name, key_type=key_type)
                backup_path = self.path("backup_key", name=key_name, key_type=key_type)
                primary_data, backup_data = read(primary_path), read(backup_path)
                primary = key_spki(primary_data) if primary_data else None
                backup = key_spki(backup_data) if backup_data else None
                what = f"{key_name} ({key_type})"
                if primary is None:
                    problems.append(f"no readable primary key {primary_path.name}")
                if backup is None:
                    problems.append(f"no readable backup key {backup_path.name}")
                if primary and backup and primary == backup:
                    problems.append(f"primary == backup for {what}")
                if state:
                    entry = state.get(key_type) or {}
                    for which, public in (("primary", primary), ("backup", backup)):
                        recorded = entry.get(f"{which}_spki")
                        if public and recorded and base64.b64decode(recorded) != public:
                            problems.append(f"the key state of {what} names another {which} key than "
                                            f"the {which} key file")
                for name in cert_names:
                    problems += self._certificate_problems(name, key_type, primary_data, primary)
        temps = self.temp_files()
        if temps:
            problems.append(f"temp files left: {self.by_directory(temps)}")
        journals = self.journal_files()
        if journals:
            problems.append(f"journal files left: {', '.join(journals)}")
        return problems

    def _certificate_problems(self, name, key_type, key_data, key_public):
        what = f"{name} ({key_type})"
        cert_path = self.path("certificate", name=name, key_type=key_type)
        cert_data = read(cert_path)
        if cert_data is None:
            return [f"certificate file {cert_path.name} is missing"]
        blocks = cert_blocks(cert_data)
        if len(blocks) < 2:
            return [f"certificate file {cert_path.name} lacks the intermediates"]
        leaf = x509.load_pem_x509_certificate(blocks[0])
        problems = []
        if key_public and spki(leaf) != key_public:
            problems.append(f"the certificate of {what} does not match its primary key file")
        chain = b"".join(blocks[1:])
        if not cert_data.startswith(blocks[0] + chain):
            problems.append(f"certificate file {cert_path.name} is not leaf + chain")
        chain_path = self.path("chain", name=name, key_type=key_type)
        chain_data = read(chain_path)
        if chain_data is None:
            problems.append(f"chain file {chain_path.name} is missing")
        elif chain_data != chain:
            problems.append(f"chain file {chain_path.name} is not the chain of the certificate file")
        else:
            try:
                leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(cert_blocks(chain_data)[0]))
            except (InvalidSignature, ValueError, TypeError) as error:
                problems.append(f"chain file {chain_path.name} did not issue the certificate of {what} "
                                f"({type(error).__name__})")
        full_path = self.path("full_key", name=name, key_type=key_type)
        full_data = read(full_path)
        if full_data is None:
            problems.append(f"full_key file {full_path.name} is missing")
        elif key_data is not None and full_data != key_data + cert_data:
            problems.append(f"full_key file {full_path.name} is not primary key + certificate file")
        return problems

    # -- figures ------------------------------------------------------------------------
    def figures(self):
        kills = self.kills
        lines = []
        done = [k for k in kills if k.killed]
        random_kills = [k for k in kills if k.how == "random"]
        syscall_kills = [k for k in kills if k.how != "random"]
        failed = [k for k in kills if k.problems]
        total = time.monotonic() - self.started
        lines.append(f"acmebot kill campaign (seed {self.seed}), {len(kills)} runs killed or attempted "
                     f"in {total:.1f} s ({total / max(len(kills), 1):.2f} s per kill with its checks)")
        lines.append(f"  kills done: {len(done)} "
                     f"(random {sum(k.killed for k in random_kills)} of {len(random_kills)}, "
                     f"the others ended before their instant; "
                     f"at a syscall {sum(k.killed for k in syscall_kills)} of {len(syscall_kills)}: "
                     + ", ".join(f"{t} {sum(k.killed for k in syscall_kills if k.how == t)}" for t in SYSCALL_KILLS)
                     + ")")
        lines.append("  run durations (unkilled): " + ", ".join(
            f"{KIND_LABELS[k]} {d:.2f} s" for k, d in self.durations.items()))
        for (kind, target), (count, names, per_process) in self.syscalls.items():
            lines.append(f"  {target}s in a {KIND_LABELS[kind]}: {count} in its busiest process "
                         f"({len(per_process)} process/syscall counters: "
                         f"{', '.join(f'{s}={c}' for (_, s), c in sorted(per_process.items())) or '-'})")
            lines.append(f"    in order: {', '.join(names) or '-'}")
        if random_kills:
            bins = [0] * 10
            for k in random_kills:
                bins[min(int(10 * k.at / k.duration), 9) if k.duration else 0] += 1
            lines.append("  random kill instants (fraction of the run's duration, deciles): "
                         + " ".join(f"{i / 10:.1f}-:{n}" for i, n in enumerate(bins)))
        for kind in KINDS:
            of_kind = [k for k in kills if k.kind == kind]
            if of_kind:
                lines.append(f"  {KIND_LABELS[kind]}: {len(of_kind)} kills "
                             f"(random {sum(k.how == 'random' for k in of_kind)}"
                             + "".join(f", {t} {sum(k.how == t for k in of_kind)}" for t in SYSCALL_KILLS)
                             + "), "
                             f"{sum(bool(k.problems) for k in of_kind)} failed")
        for label, group in (("random", [k for k in done if k.how == "random"]),
                             ("syscall", [k for k in done if k.how != "random"])):
            if group:
                lines.append(
                    f"  right after a {label} kill: nothing changed yet (outside archive, temp files and "
                    f"journal) {sum(k.changed_at_kill == 0 for k in group)}, files changed "
                    f"{sum(k.changed_at_kill > 0 for k in group)}; temp files left by "
                    f"{sum(k.temps_at_kill > 0 for k in group)}, a journal by "
                    f"{sum(k.journals_at_kill > 0 for k in group)}")
        lines.append(f"  recoveries OK: {len(kills) - len(failed)} of {len(kills)}; failures: {len(failed)}"
                     + (f" (directories reset {self.resets} times to go on)" if self.resets else ""))
        grouped = collections.defaultdict(list)
        for k in failed:
            for problem in k.problems:
                grouped[re.sub(r"\d+(\.\d+)?", "#", problem)].append((k, problem))
        for _, entries in sorted(grouped.items(), key=lambda item: -len(item[1])):
            k, problem = entries[0]
            lines.append(f"    {len(entries)}x {problem}")
            lines.append(f"       first: {k.label}; also: "
                         + (", ".join(f"#{e[0].number} {e[0].how} {e[0].kind}"
                                      + (f" N={int(e[0].at)}" if e[0].how != "random" else "")
                                      for e in entries[1:8]) or "-")
                         + (" ..." if len(entries) > 8 else ""))
        return "\n".join(lines)


class CampaignError(RuntimeError):
    """The campaign itself could not go on (a run without a kill failed)."""


def syscall_gaps(campaign, count=None):
    """The (kind, syscall, N) to kill at: every rename and link of every kind, or `count`
    of them evenly spaced over that list from a random offset (the seed decides; over
    many campaigns every gap is hit)."""
    gaps = [(kind, target, n) for (kind, target), (total, _, _) in campaign.syscalls.items()
            for n in range(1, total + 1)]
    if count is None or count >= len(gaps):
        return gaps
    if count <= 0:
        return []
    step = len(gaps) / count
    offset = campaign.rng.uniform(0, step)
    return [gaps[int(offset + i * step)] for i in range(count)]


def run_campaign(campaign, kills, syscall_kills=None):
    """Set-up, then `kills` random kills (kinds alternated), then the kills at renames
    and links (syscall_gaps)."""
    campaign.setup()
    for kind in KINDS:
        campaign.count_syscalls(kind)
    kinds = list(KINDS)
    for i in range(kills):
        campaign.random_kill(kinds[i % len(kinds)])
    for kind, target, n in syscall_gaps(campaign, syscall_kills):
        campaign.syscall_kill(kind, target, n)
    return campaign


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=200, help="random kills (default 200)")
    parser.add_argument("--syscall-kills", type=int, default=None,
                        help="kills at a rename or link, evenly spaced over all of them in every kind "
                             "of run (default: at every rename and every link)")
    parser.add_argument("--fresh-authorizations", action="store_true",
                        help="a pebble of the campaign's own with PEBBLE_AUTHZREUSE=0: every run answers "
                             "dns-01 and http-01 challenges (runs take longer)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    parser.add_argument("--keep", action="store_true", help="keep the directory (its path is printed)")
    parser.add_argument("--quiet", action="store_true", help="print only the figures")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("killcampaign: must run as root (it creates a network namespace)", file=sys.stderr)
        return 3
    missing = [name for name in (*REQUIRED_BINARIES, "strace") if shutil.which(name) is None]
    if missing:
        print(f"killcampaign: required program(s) not found: {', '.join(missing)}", file=sys.stderr)
        return 3
    error = isolate_network()
    if error:
        print(f"killcampaign: cannot isolate the campaign on loopback: {error}", file=sys.stderr)
        return 3
    os.environ["ACMEBOT_TEST_NETNS"] = "1"
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: sys.exit(130))
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    root = Path(tempfile.mkdtemp(prefix="acmebot-kills-"))

    def log(message):
        if not args.quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    campaign = None
    try:
        with Lab(root / "lab") as lab:
            pebble = lab.start_pebble("kills", extra_env={"PEBBLE_AUTHZREUSE": "0"}) \
                if args.fresh_authorizations else None
            campaign = Campaign(lab, root / "run", seed=seed, pebble=pebble, log=log)
            run_campaign(campaign, args.kills, args.syscall_kills)
            print(campaign.figures())
            return 1 if any(k.problems for k in campaign.kills) else 0
    except (LabError, CampaignError) as error:
        if campaign is not None and campaign.kills:
            print(campaign.figures())
        print(f"killcampaign: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        if campaign is not None:
            print(campaign.figures())
        print("killcampaign: interrupted", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"killcampaign: kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
