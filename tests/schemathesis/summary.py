"""What scripts/contract.sh's Schemathesis runs did: requests sent, the answers' statuses
per operation, and how often each accepted exception of baseline.yaml was used.

usage: summary.py passed|failed BASELINE_LOG REPORT.ndjson...
("passed" ends with the plain closing line `contract: N passed, 0 failed`, N the requests.)
"""

import collections
import json
import sys
from pathlib import Path

import yaml


def interactions(report):
    for line in Path(report).read_text(encoding="utf-8").split("\n"):
        if not line:
            continue
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if finished:
            yield from finished["recorder"].get("interactions", {}).values()


def main(outcome, log, reports):
    statuses = collections.defaultdict(collections.Counter)
    total = 0
    for report in reports:
        for interaction in interactions(report):
            request, response = interaction["request"], interaction.get("response")
            path = request["uri"].split("//", 1)[-1].split("/", 1)[-1].split("?")[0]
            status = response["status_code"] if response else "no answer"
            statuses[f"{request['method']} /{path}"][status] += 1
            total += 1
    print(f"contract: {total} requests in {len(reports)} runs; answers by operation:")
    spec = yaml.safe_load(Path("openapi.yaml").read_text(encoding="utf-8"))
    documented = {f"{m.upper()} {p}" for p, item in spec["paths"].items() for m in item}
    others = collections.Counter()
    for operation in sorted(statuses):
        if operation not in documented:
            others.update(statuses[operation])
            continue
        counts = ", ".join(f"{s}: {n}" for s, n in sorted(statuses[operation].items(), key=str))
        print(f"  {operation:36} {counts}")
    counts = ", ".join(f"{s}: {n}" for s, n in sorted(others.items(), key=str))
    print(f"  {'methods not documented':36} {counts}")
    entries = yaml.safe_load((Path(__file__).parent / "baseline.yaml").read_text(encoding="utf-8")) or []
    used = collections.Counter(Path(log).read_text().split()) if Path(log).exists() else collections.Counter()
    print(f"contract: accepted exceptions (tests/schemathesis/baseline.yaml), {sum(used.values())} answers in all:")
    for i, entry in enumerate(entries):
        codes = "/".join(code or "(no error code)" for code in entry["codes"])
        print(f"  {used.get(str(i), 0):5}  {entry['operation']} {entry['failure']} {entry['status']} {codes}")
    if outcome == "passed":
        print(f"contract: {total} passed, 0 failed")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
