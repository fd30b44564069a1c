"""A hook for the secrets tests: `hook_env.py FILE LABEL key=value ... [-- COMMAND ...]`
appends one JSON object to FILE: the label, its own argv and environment and,
when its parent is the shell that acmebot started (`sh -c LINE`), that shell's
argv and environment too (read from /proc).  After `--` it execs COMMAND with
the remaining arguments (for reload_zone_command, to which acmebot appends the
zone), so the recorded process is the one that really does the work."""

import json
import os
import sys


def proc(pid, name):
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return [part.decode("utf-8", "surrogateescape") for part in f.read().split(b"\0") if part]
    except OSError:
        return None


path, label, *rest = sys.argv[1:]
command = []
if "--" in rest:
    command = rest[rest.index("--") + 1:]
    rest = rest[:rest.index("--")]
record = {"label": label, "fields": dict(pair.split("=", 1) for pair in rest),
          "argv": sys.argv, "env": dict(os.environ)}
parent = proc(os.getppid(), "cmdline")
if parent and os.path.basename(parent[0]) in ("sh", "dash", "bash"):
    record["parent_argv"] = parent
    record["parent_env"] = proc(os.getppid(), "environ")
with open(path, "a", encoding="utf-8") as out:
    out.write(json.dumps(record) + "\n")
if command:
    os.execvp(command[0], command)
