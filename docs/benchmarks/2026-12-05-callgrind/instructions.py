"""instructions.py CALLGRIND_OUT...: instructions counted in each file, with SHA-256 apart.

Under valgrind the sha2 crate finds no SHA extensions and hashes in software (18 % of the
count), where the machine's own CPU has them (0.1 % of a perf profile): `net` leaves it out.
"""
import re
import subprocess
import sys

for path in sys.argv[1:]:
    annotated = subprocess.run(["callgrind_annotate", path], capture_output=True, text=True).stdout
    total = sha = 0
    for line in annotated.splitlines():
        count = re.match(r"\s*([\d,]+)\s", line)
        if not count:
            continue
        value = int(count.group(1).replace(",", ""))
        if "PROGRAM TOTALS" in line:
            total = value
        elif "sha2::sha256" in line:
            sha += value
    print(f"{path}: {total / 1e9:.3f} G instructions, SHA-256 {sha / 1e9:.3f} G, net {(total - sha) / 1e9:.3f} G")
