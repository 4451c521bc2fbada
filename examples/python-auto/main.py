"""Uses a local package (textstats) and an installed one (yaml)."""

import sys

import yaml
from textstats import summarize

TEXT = "to be or not to be that is the question"

summary = summarize(TEXT)
with open(sys.argv[1], "w") as f:
    yaml.safe_dump(summary, f, sort_keys=True)
print(yaml.safe_dump(summary, sort_keys=True), end="")
