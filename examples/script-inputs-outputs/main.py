"""Count words in a text and sum the numeric columns of CSV tables."""

import argparse
import collections
import csv
import json
import pathlib

ap = argparse.ArgumentParser()
ap.add_argument("--text", required=True)
ap.add_argument("--tables", required=True)
ap.add_argument("--top", type=int, default=3)
ap.add_argument("--out", required=True)
ap.add_argument("--report", required=True)
a = ap.parse_args()

words = collections.Counter(pathlib.Path(a.text).read_text().lower().split())
totals: dict[str, float] = {}
for table in sorted(pathlib.Path(a.tables).glob("*.csv")):
    with open(table, newline="") as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                totals[k] = totals.get(k, 0.0) + float(v)

top = words.most_common(a.top)
pathlib.Path(a.out).write_text(json.dumps({"top": top, "totals": totals}, indent=1))
report = pathlib.Path(a.report)
report.mkdir(parents=True, exist_ok=True)
(report / "words.txt").write_text("".join(f"{w} {n}\n" for w, n in top))
(report / "totals.txt").write_text("".join(f"{k} {v:g}\n" for k, v in sorted(totals.items())))
print(f"top {a.top} words: {', '.join(w for w, _ in top)}")
print(f"column totals: {totals}")
