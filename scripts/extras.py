"""Print the requirements of the named extras of pyproject.toml (comma-separated argv[1]),
plus the build requirements, so the Makefile installs from one list."""

import sys
import tomllib
from pathlib import Path

data = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
reqs = list(data["build-system"]["requires"]) + list(data["project"]["dependencies"])
for extra in filter(None, sys.argv[1].split(",") if len(sys.argv) > 1 else []):
    reqs += data["project"]["optional-dependencies"][extra]
print(" ".join(reqs))
