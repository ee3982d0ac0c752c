"""Schemathesis hooks for scripts/contract.sh: the accepted exceptions of baseline.yaml.

A failure is dropped only when one entry matches all of it: the operation, the failure
code (ST101 server error, ST202 valid request refused, ...), the status and the app's
error code (`error.code` of the JSON body), and, when the entry says so, words of the
error's message (`message_contains`, any of them) and the request body fields present
(`when_body_has`) or absent (`when_body_lacks`). Every entry must give its
`reason`. Each drop is appended to $CONTRACT_BASELINE_LOG (one entry index per line) so
the script can say how often each exception was used.
"""

import json
import os
from pathlib import Path

import schemathesis
import yaml

_HERE = Path(__file__).resolve().parent
_LOG = os.environ.get("CONTRACT_BASELINE_LOG")


def _load():
    entries = yaml.safe_load((_HERE / "baseline.yaml").read_text(encoding="utf-8")) or []
    for i, entry in enumerate(entries):
        missing = {"operation", "failure", "status", "codes", "reason"} - set(entry)
        if missing:
            raise ValueError(f"baseline.yaml entry {i}: missing {sorted(missing)}")
        if not str(entry["reason"]).strip():
            raise ValueError(f"baseline.yaml entry {i}: an empty reason")
    return entries


ENTRIES = _load()


def _error(response):
    try:
        error = json.loads(response.content)["error"]
        return error["code"], error["message"]
    except (ValueError, KeyError, TypeError):
        return None, None


def _body_fields(case):
    # A field sent as null is absent to the app (its optional fields read null as none).
    if not isinstance(case.body, dict):
        return set()
    return {name for name, value in case.body.items() if value is not None}


def _matches(entry, failure, case, response):
    if entry["operation"] != case.operation.label or entry["failure"] != failure.code:
        return False
    code, message = _error(response)
    if response.status_code != entry["status"] or code not in entry["codes"]:
        return False
    words = entry.get("message_contains")
    if words and not any(word in (message or "") for word in words):
        return False
    fields = _body_fields(case)
    if not set(entry.get("when_body_has", [])) <= fields:
        return False
    if set(entry.get("when_body_lacks", [])) & fields:
        return False
    return True


@schemathesis.hook
def filter_failure(context, failure, case, response):
    if response is None:
        return True
    for index, entry in enumerate(ENTRIES):
        if _matches(entry, failure, case, response):
            if _LOG:
                with open(_LOG, "a", encoding="utf-8") as log:
                    log.write(f"{index}\n")
            return False
    return True
