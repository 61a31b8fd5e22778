"""The one way a generated doc is written, or checked against what is committed (`--check`)."""

import sys
from pathlib import Path


def write_or_check(doc: Path, text: str, script: str) -> None:
    if "--check" in sys.argv:
        if not doc.exists() or doc.read_text() != text:
            sys.exit(f"{doc} is stale: run python scripts/{script}")
        print(f"{doc} is current")
    else:
        doc.write_text(text)
        print(f"wrote {doc}")
