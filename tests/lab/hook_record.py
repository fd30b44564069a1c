"""A hook for tests: `hook_record.py FILE key=value ...` appends one JSON object
(the key=value arguments) as a line to FILE."""

import json
import sys

path, *pairs = sys.argv[1:]
fields = dict(pair.split("=", 1) for pair in pairs)
with open(path, "a", encoding="utf-8") as out:
    out.write(json.dumps(fields) + "\n")
