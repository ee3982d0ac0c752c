#!/usr/bin/env python3
"""Validates spin.toml against Spin's manifest JSON schema (path given as argument).

Uses `jsonschema` when it is installed; otherwise checks the schema's required keys and
`additionalProperties: false` objects by hand for the parts this app uses. With `CI` set
`jsonschema` is required: the hand-written check is for a developer's machine only.
"""
import json
import os
import sys
import tomllib
from pathlib import Path

root = Path(__file__).resolve().parent.parent
manifest = tomllib.loads((root / "spin.toml").read_text())
schema = json.loads(Path(sys.argv[1]).read_text())

try:
    import jsonschema  # type: ignore
except ImportError:
    if os.environ.get("CI"):
        sys.exit("check-manifest.py: jsonschema is not installed, and CI is set (.ci/run installs it)")
    jsonschema = None

if jsonschema is not None:
    jsonschema.validate(manifest, schema)
else:
    defs = schema["$defs"]
    def check(obj, sch, where):
        if "$ref" in sch:
            sch = defs[sch["$ref"].split("/")[-1]]
        if sch.get("type") == "object" and isinstance(obj, dict):
            props = sch.get("properties", {})
            for key in sch.get("required", []):
                assert key in obj, f"{where}: missing {key}"
            if sch.get("additionalProperties") is False:
                for key in obj:
                    assert key in props, f"{where}: unknown field {key}"
            for key, value in obj.items():
                if key in props:
                    check(value, props[key], f"{where}.{key}")
    check(manifest, schema, "spin.toml")
    for cid, comp in manifest["component"].items():
        check(comp, defs["Component"], f"component.{cid}")
    for name, var in manifest["variables"].items():
        check(var, defs["Variable"], f"variables.{name}")
        assert "default" in var or var.get("required"), f"variables.{name}: needs default or required"
    for t in manifest["trigger"]["http"]:
        assert t["component"] in manifest["component"], f"trigger {t['route']}: unknown component"

print("spin.toml conforms to", sys.argv[1])
