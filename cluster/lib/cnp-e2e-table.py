"""Per-test table of a network-policy-api conformance run (scripts/upstream-e2e --cnp).

Reads OUT/test.log (go test -test.v output of TestConformanceProfiles) and writes
OUT/summary.md (Markdown, between run markers) and OUT/counts ("passed failed skipped").
A test's result is what go test printed for TestConformanceProfiles/<ShortName>; SCTP tests
are annotated as not meaningful here (no SCTP sockets on this kernel), whatever they printed.
"""
import datetime
import re
import sys

out, sctp_note, features, commit, k8s, channel = sys.argv[1:]
log = open(f"{out}/test.log", errors="replace").read().splitlines()

top = re.compile(r"^=== RUN\s+TestConformanceProfiles/([^/\s]+)$")
done = re.compile(r"^\s*--- (PASS|FAIL|SKIP): TestConformanceProfiles/([^/\s]+) \(([\d.]+)s\)")
blocks, current = {}, None
results = {}
for line in log:
    m = top.match(line)
    if m:
        current = m.group(1)
        blocks.setdefault(current, [])
        continue
    m = done.match(line)
    if m:
        results[m.group(2)] = (m.group(1), float(m.group(3)))
        continue
    if current:
        blocks[current].append(line)


def reason(name, state):
    lines = blocks.get(name, [])
    if state == "SKIP":
        for l in lines:
            if "Skipping" in l or "does not support" in l:
                return l.strip()
        return ""
    for l in lines:
        if re.search(r"FAILED|Error|error|timed out", l):
            return l.strip()[:220]
    return ""


rows = []
for name in sorted(set(blocks) | set(results)):
    state, secs = results.get(name, ("FAIL", 0.0))
    note = reason(name, state) if state != "PASS" else ""
    if name not in results:
        note = "did not finish (see test.log)"
    if "SCTP" in name:
        note = f"{sctp_note}; {note}" if note else sctp_note
    rows.append((name, state, secs, note))

passed = sum(r[1] == "PASS" for r in rows)
failed = sum(r[1] == "FAIL" for r in rows)
skipped = sum(r[1] == "SKIP" for r in rows)
overall = [l for l in log if re.match(r"^(--- )?(PASS|FAIL|ok|FAIL\s)", l)][-1:] or ["(no verdict)"]
date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
res = {"PASS": "passed", "FAIL": "**failed**", "SKIP": "skipped"}
lines = [
    "<!-- run: cnp -->",
    "### network-policy-api v0.3.0, profile ClusterNetworkPolicy",
    "",
    f"**{passed} passed, {failed} failed, {skipped} skipped** (go test: `{overall[0].strip()}`).",
    "",
    f"- suite: sigs.k8s.io/network-policy-api v0.3.0 `conformance/`, unmodified (`go test -c`); CRDs: {channel} channel",
    f"- supported features claimed: ClusterNetworkPolicy (the profile's standard feature), {features or 'none else'}",
    f"- Kubernetes {k8s}; sluice commit `{commit}`; date {date}",
    "",
    "| test | result | seconds | note |",
    "|---|---|---|---|",
]
for name, state, secs, note in rows:
    note = note.replace("|", "\\|")
    lines.append(f"| {name} | {res[state]} | {secs:.0f} | {note} |")
lines.append("<!-- end -->")
open(f"{out}/summary.md", "w").write("\n".join(lines) + "\n")
open(f"{out}/counts", "w").write(f"{passed} {failed} {skipped}\n")
for name, state, secs, note in rows:
    if state == "FAIL":
        print(f"FAILED: {name}: {note}", file=sys.stderr)
