"""The documentation cannot drift from the program: acmebot.example.json loads
and lists every setting and hook, README.rst names every command-line option, and
docs/configuration.rst (the configuration reference) documents every setting and hook.
Fast, no root, no network: acmebot is imported in process (like test_units.py)."""

import base64
import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ACMEBOT = ROOT / "acmebot"
EXAMPLE = ROOT / "acmebot.example.json"
README = ROOT / "README.rst"
REFERENCE = ROOT / "docs" / "configuration.rst"


from test_units import GROUP, USER, ab  # acmebot imported in process once
PLACEHOLDER = re.compile(r"^<(.+)>$")


def _log_key():
    """A real P-256 public key and its log id, for the example's CT log placeholders."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    der = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode(), base64.b64encode(hashlib.sha256(der).digest()).decode()


def _fill(value, special, seen):
    """Replaces every "<...>" placeholder (keys and values) with a valid value:
    a known one from ``special``, or else the text inside the brackets."""
    if isinstance(value, dict):
        return {_fill(k, special, seen): _fill(v, special, seen) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, special, seen) for v in value]
    if isinstance(value, str):
        match = PLACEHOLDER.match(value)
        if match:
            seen.add(value)
            return special.get(match.group(1), match.group(1))
    return value


def example_raw(tmp_path):
    raw = json.loads(EXAMPLE.read_text())
    key, log_id = _log_key()
    special = {
        "eab key id from your CA, or delete": "kid-1",
        "eab base64url HMAC key from your CA, or delete": "c2VjcmV0LWhtYWMta2V5LWZvci10ZXN0cw",
        "base64 log id": log_id,
        "base64 DER public key of the log": key,
        "update.example.com.key": str(tmp_path / "update.example.com.key"),
        "update.example.org.key": str(tmp_path / "update.example.org.key"),
    }
    seen = set()
    raw = _fill(raw, special, seen)
    raw["settings"]["file_user"] = USER
    raw["settings"]["file_group"] = GROUP
    return raw, seen


def test_example_loads_with_no_problem(tmp_path):
    raw, seen = example_raw(tmp_path)
    assert seen, "the example shows no <placeholder> at all"
    assert "<" not in json.dumps(raw), "a placeholder was left in the example"
    config = ab.parse_config(raw, str(tmp_path / "acmebot.json"))
    names = {cert.name for key in config.keys for cert in key.certificates}
    assert {"example.com", "example-ip", "example.org", "mail.example.org"} <= names
    ip_cert = next(c for k in config.keys for c in k.certificates if c.name == "example-ip")
    assert ip_cert.ips and ip_cert.profile == "shortlived"
    assert config.eab is not None
    assert config.challenge_aliases
    assert {"example_log", "example_sharded_log"} <= set(config.ct_logs)


def test_example_shows_every_default(tmp_path):
    raw, _ = example_raw(tmp_path)
    fields = {f.name for f in dataclasses.fields(ab.Settings)}
    assert set(raw["settings"]) == fields
    original = json.loads(EXAMPLE.read_text())["settings"]
    for f in dataclasses.fields(ab.Settings):
        default = f.default
        shown = original[f.name]
        if isinstance(default, tuple):
            shown = tuple(shown)
        if f.name in ("file_user", "file_group"):
            assert shown == default
        else:
            assert shown == default, f"settings.{f.name}: example {shown!r}, default {default!r}"
    assert set(raw["directories"]) == set(ab.DEFAULT_DIRECTORIES)
    assert json.loads(EXAMPLE.read_text())["directories"] == ab.DEFAULT_DIRECTORIES
    assert raw["file_names"] == ab.DEFAULT_FILE_NAMES
    assert raw["hpkp_headers"] == ab.DEFAULT_HPKP_HEADERS
    assert set(raw["account"]) == {"email", "eab_kid", "eab_hmac_key", "eab_algorithm"}


def test_example_names_every_hook(tmp_path):
    raw, _ = example_raw(tmp_path)
    assert set(raw["hooks"]) == set(ab.HOOKS)
    assert len(ab.HOOKS) == 18


def _help_options():
    result = subprocess.run([sys.executable, str(ACMEBOT), "--help"], capture_output=True, text=True,
                            timeout=60, env=dict(os.environ, COLUMNS="200"))
    assert result.returncode == 0, result.stderr
    return result.stdout, sorted(set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", result.stdout)))


def test_readme_names_every_option():
    text, options = _help_options()
    assert "--config" in options and "--verify" in options
    readme = README.read_text()
    missing = [o for o in options if not re.search(re.escape(o) + r"(?![a-z0-9-])", readme)]
    assert not missing, f"README.rst does not mention {', '.join(missing)}"


def test_readme_exit_codes_match_help():
    readme = README.read_text()
    for line in ab.EXIT_CODES_HELP.splitlines():
        assert line in readme, f"README.rst lacks the exit code line {line!r}"


def test_readme_keeps_the_performance_section():
    readme = README.read_text()
    assert "\nPerformance\n===========\n" in readme
    assert "Figures: see below (filled in from tests/bench)" in readme


@pytest.mark.parametrize("name", sorted(ab.HOOKS))
def test_reference_documents_every_hook_with_its_fields(name):
    reference = REFERENCE.read_text()
    entry = re.search(rf"^``{name}``\n((?:    .*\n)+)", reference, re.M)
    assert entry, f"docs/configuration.rst has no entry for hook {name}"
    for field_name in ab.HOOKS[name]:
        assert f"``{field_name}``" in entry.group(1), f"hook {name}: field {field_name} undocumented"


def test_reference_documents_every_setting():
    reference = REFERENCE.read_text()
    # an entry starts a line: ``name`` (default ...), possibly beside another one
    entries = re.findall(r"^(``[a-z_]+``.*\(default.*)$", reference, re.M)
    documented = {name for line in entries for name in re.findall(r"``([a-z_]+)`` \(default", line)}
    missing = [f.name for f in dataclasses.fields(ab.Settings) if f.name not in documented]
    assert not missing, f"docs/configuration.rst does not document the settings {', '.join(missing)}"


def test_readme_points_to_the_reference():
    assert "docs/configuration.rst" in README.read_text()
