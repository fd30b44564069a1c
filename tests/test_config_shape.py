"""The shape of the loaded config: directory kinds and hook names as checked
enumerations, one file_path for every key and certificate file, and the
options a certificate inherits (unit tier: in process, no servers)."""

import dataclasses

import pytest

from test_units import ab, config, parse  # acmebot imported in process once


def _cfg(**top):
    return parse(config(certificates={"example.com": {"alt_names": {"example.com": ["@", "www"]}}}, **top))


# -- file_path -------------------------------------------------------------------

def test_file_path_expands_directory_and_file_name_with_the_same_fields():
    cfg = _cfg(directories={"certificate": "/srv/{key_type}/{name}", "sct": "/srv/scts/{name}{suffix}"},
               file_names={"certificate": "{name}-{key_type}{suffix}.crt", "sct": "{ct_log_name}.{name}.sct"},
               key_type_suffixes={"ecdsa": ".ec"})
    assert ab.file_path(cfg, ab.Dir.CERTIFICATE, "example.com", "ecdsa") == \
        "/srv/ecdsa/example.com/example.com-ecdsa.ec.crt"
    assert ab.file_path(cfg, ab.Dir.SCT, "example.com", "rsa", ct_log_name="log1") == \
        "/srv/scts/example.com.rsa/log1.example.com.sct"
    # a file of no key type: no suffix; only HPKP headers have a server
    assert ab.file_path(cfg, ab.Dir.HPKP, "example.com", server="nginx") == "/etc/ssl/hpkp/example.com.nginx"


def test_file_path_is_none_for_a_kind_that_is_off():
    cfg = _cfg()
    assert cfg.directories[ab.Dir.PREVIOUS_KEY] is None
    assert ab.file_path(cfg, ab.Dir.PREVIOUS_KEY, "example.com", "rsa") is None
    cfg = _cfg(directories={"previous_key": "/srv/old"})
    assert ab.file_path(cfg, "previous_key", "example.com", "rsa") == "/srv/old/example.com_previous.rsa.key"


def test_file_path_never_leaves_its_directory():
    cfg = _cfg()
    with pytest.raises(ab.FileError, match="would leave the directory"):
        ab.file_path(cfg, ab.Dir.CERTIFICATE, "../../etc/passwd", "rsa")


def test_the_path_helpers_are_file_path():
    """key_paths, cert_paths and the hpkp, ocsp, sct and previous key paths
    give what file_path gives for their kind."""
    cfg = _cfg(directories={"previous_key": "/srv/old"})
    (key,) = cfg.keys
    (cert,) = key.certificates
    for key_type in ("rsa", "ecdsa"):
        assert ab.key_paths(cfg, key, key_type) == (ab.file_path(cfg, ab.Dir.PRIVATE_KEY, key.name, key_type),
                                                    ab.file_path(cfg, ab.Dir.BACKUP_KEY, key.name, key_type))
        for kind, path in ab.cert_paths(cfg, cert, key_type).items():
            assert path == ab.file_path(cfg, kind, cert.name, key_type)
        assert ab.ocsp_path(cfg, cert, key_type) == ab.file_path(cfg, ab.Dir.OCSP, cert.name, key_type)
        assert ab.sct_path(cfg, cert, key_type, "argon") == "/etc/ssl/scts/example.com/%s/argon.sct" % key_type
        assert ab.previous_key_path(cfg, key, key_type) == f"/srv/old/example.com_previous.{key_type}.key"
    assert ab.hpkp_paths(cfg, key) == {"apache": "/etc/ssl/hpkp/example.com.apache",
                                       "nginx": "/etc/ssl/hpkp/example.com.nginx"}


# -- directory kinds and hook names ------------------------------------------------

def test_every_directory_and_file_name_kind_is_a_dir():
    assert list(ab.DEFAULT_DIRECTORIES) == list(ab.Dir)
    assert set(ab.DEFAULT_FILE_NAMES) <= set(ab.Dir)
    assert set(ab.REQUIRED_DIRECTORIES) | set(ab.DIRECTORY_FIELDS) | set(ab.FILE_NAME_FIELDS) <= set(ab.Dir)
    assert list(ab.HOOKS) == list(ab.Hook)
    assert ab.Dir.PRIVATE_KEY == "private_key" and f"{ab.Hook.NOTIFY}" == "notify"


@pytest.mark.parametrize("read", [
    lambda cfg: cfg.directory("privte_key"),
    lambda cfg: cfg.file_name("certficate", name="x", key_type="rsa", suffix="", server=""),
    lambda cfg: cfg.directories.get("tmp"),
    lambda cfg: cfg.directories["resources"],
    lambda cfg: "htt_challenge" in cfg.directories,
    lambda cfg: ab.file_path(cfg, "ocps", "example.com", "rsa"),
    lambda cfg: cfg.hooks.get("notfy"),
    lambda cfg: "certificate_install" in cfg.hooks,
], ids=["directory", "file_name", "directories.get", "directories[]", "in directories", "file_path",
        "hooks.get", "in hooks"])
def test_a_misspelt_kind_or_hook_in_the_code_raises(read):
    """A plain dict would answer None ("not configured"): the maps of the config refuse the name."""
    with pytest.raises(ValueError, match="is not a valid (Dir|Hook)"):
        read(_cfg())


def test_a_misspelt_hook_name_raises_where_it_is_run_or_staged(tmp_path):
    cfg = _cfg(hooks={"certificate_installed": "true"})
    with pytest.raises(ValueError, match="is not a valid Hook"):
        ab.run_hook(cfg, "certificate_instaled", key_name="k")
    txn = ab.Transaction(cfg, "example.com", ab.utcnow())
    with pytest.raises(ValueError, match="is not a valid Hook"):
        txn.add(str(tmp_path / "x.pem"), b"x", False, ("certficate_installed", {}))
    assert txn.files == []
    # a hook that is not configured is no error: it does not run
    ab.run_hook(cfg, ab.Hook.CHAIN_INSTALLED, key_name="k")


def test_configured_kinds_and_hooks_read_as_strings_or_members():
    cfg = _cfg(hooks={"notify": "true"}, directories={"temp": "/srv/tmp"})
    assert cfg.hooks.get("notify") == cfg.hooks[ab.Hook.NOTIFY] == "true"
    assert cfg.hooks.get("chain_installed") is None
    assert cfg.directories.get("temp") == cfg.directories[ab.Dir.TEMP] == "/srv/tmp"


def test_a_config_built_with_plain_dicts_is_checked_too():
    cfg = dataclasses.replace(_cfg(), directories=dict(ab.DEFAULT_DIRECTORIES), hooks={})
    assert isinstance(cfg.directories, ab.DirMap) and isinstance(cfg.hooks, ab.HookMap)
    with pytest.raises(ValueError):
        cfg.directory("privatekey")


@pytest.mark.parametrize("section, key, message", [
    ("directories", "privte_key", "directories.privte_key: unknown option (did you mean 'private_key'?)"),
    ("file_names", "certficate", "file_names.certficate: unknown option (did you mean 'certificate'?)"),
    ("hooks", "certificate_instaled", "hooks.certificate_instaled: unknown option "
                                      "(did you mean 'certificate_installed'?)"),
])
def test_loading_refuses_unknown_kinds_and_hooks(section, key, message):
    with pytest.raises(ab.ConfigError) as caught:
        _cfg(**{section: {key: "/x" if section == "directories" else "x"}})
    assert caught.value.problems == [f"/etc/acmebot/acmebot.json: {message}"]


# -- inherited options -------------------------------------------------------------

def test_the_inherited_options_are_settings_and_certificate_options():
    settings = {f.name for f in dataclasses.fields(ab.Settings)}
    assert set(ab.CERT_INHERITED) <= settings and set(ab.CERT_INHERITED) <= set(ab.CERT_OPTIONS)
    assert set(ab.KEY_INHERITED) <= settings and set(ab.KEY_INHERITED) <= set(ab.KEY_OPTIONS)
    assert set(ab.CERT_INHERITED) <= {f.name for f in dataclasses.fields(ab.Inherited)}


def test_a_certificate_inherits_from_its_key_and_the_settings_unless_it_sets_its_own():
    cfg = parse(config(
        settings={"ocsp_must_staple": True, "profile": "classic", "dhparam_size": 3072, "key_curve": None},
        private_keys={"k": {"key_types": ["rsa"], "certificates": {
            "a.example.com": {},
            "b.example.com": {"profile": "tlsserver", "ocsp_must_staple": False, "dhparam_size": 0}}}}))
    (key,) = cfg.keys
    a, b = key.certificates
    assert key.key_types == ("rsa",) and key.key_curve is None and key.key_size == 4096
    assert (a.key_name, a.key_types, a.profile, a.ocsp_must_staple, a.dhparam_size) == \
        ("k", ("rsa",), "classic", True, 3072)
    assert (b.key_name, b.key_types, b.profile, b.ocsp_must_staple, b.dhparam_size) == \
        ("k", ("rsa",), "tlsserver", False, 0)


def test_a_certificate_can_narrow_its_keys_types_but_not_widen_them():
    cfg = parse(config(private_keys={"k": {"key_types": ["ecdsa"], "certificates": {
        "a.example.com": {"key_types": ["rsa", "ecdsa"]}}}}))
    assert cfg.keys[0].certificates[0].key_types == ("ecdsa",)
    with pytest.raises(ab.ConfigError) as caught:
        parse(config(private_keys={"k": {"key_types": ["ecdsa"], "certificates": {
            "a.example.com": {"key_types": ["rsa"]}}}}))
    assert caught.value.problems == [
        "/etc/acmebot/acmebot.json: private_keys.k.certificates.a.example.com.key_types: no key type left "
        "(key_size/key_curve turn off the ones asked for)"]


def _spelt_kinds_and_hooks():
    """(enumeration, name, line) of every directory kind and hook name written
    as a string literal in acmebot where the code reads one: run_hook and
    file_path arguments, Config.directory/file_name, the directories,
    file_names and hooks maps, and the (hook, fields) pairs staged with files."""
    import ast
    from test_units import ACMEBOT

    def text(node):
        return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None

    maps = {"directories": ab.Dir, "file_names": ab.Dir, "hooks": ab.Hook}
    for node in ast.walk(ast.parse(ACMEBOT.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            args = [text(arg) for arg in node.args]
            if name in ("run_hook", "file_path") and len(args) > 1 and args[1]:
                yield (ab.Hook if name == "run_hook" else ab.Dir), args[1], node.lineno
            elif name in ("directory", "file_name") and isinstance(func, ast.Attribute) and args and args[0]:
                yield ab.Dir, args[0], node.lineno
            elif (name == "get" and isinstance(func.value, ast.Attribute) and func.value.attr in maps
                  and args and args[0]):
                yield maps[func.value.attr], args[0], node.lineno
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) \
                and node.value.attr in maps and text(node.slice):
            yield maps[node.value.attr], text(node.slice), node.lineno
        elif (isinstance(node, ast.Tuple) and len(node.elts) == 2 and text(node.elts[0])
              and isinstance(node.elts[1], ast.Call) and getattr(node.elts[1].func, "id", None) == "dict"):
            yield ab.Hook, text(node.elts[0]), node.lineno


def test_every_kind_and_hook_the_code_spells_as_a_string_exists():
    """The maps raise on a misspelt name when that line runs; this finds one on
    a line no other test runs."""
    spelt = list(_spelt_kinds_and_hooks())
    assert {kinds for kinds, _, _ in spelt} == {ab.Dir, ab.Hook} and len(spelt) > 30
    wrong = [f"acmebot line {line}: '{name}' is not a {kinds.__name__}"
             for kinds, name, line in spelt if name not in set(kinds)]
    assert not wrong, wrong
