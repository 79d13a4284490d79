"""Import ``model.xtra`` and ``model.training`` as they were at an earlier commit, beside today's.

A benchmark that states a speed-up as a ratio should time the old code and the new in the same run
on the same host load; keeping the old step alive in the model as a setting would leave dead code in
the package. This reads the two modules out of git (``git show REV:path``), writes them to a
temporary package whose ``training`` imports that package's ``xtra``, and imports it. The modules of
the step that ``xtra`` and ``training`` import (``STEP_MODULES``) come from the same commit where
it has them, so an older step is not timed with today's optimizer.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import tempfile
import types
from pathlib import Path

__all__ = ["load_baseline"]

ROOT = Path(__file__).resolve().parent.parent
#: The modules of ``model`` a training step runs, taken from the baseline commit where they exist.
STEP_MODULES = ("xtra", "training", "sparse_adam", "reconstruction")


def load_baseline(rev: str) -> types.ModuleType:
    """A package with ``xtra`` and ``training`` submodules as of commit ``rev`` of this repository."""
    name = "xtream_baseline_" + "".join(c if c.isalnum() else "_" for c in rev)
    if name in sys.modules:
        return sys.modules[name]
    folder = Path(tempfile.mkdtemp(prefix="xtream-baseline-")) / name
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    present = []
    for module in STEP_MODULES:
        shown = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:model/{module}.py"], check=False,
                               capture_output=True, text=True)
        if shown.returncode != 0:
            if module in ("xtra", "training"):
                raise FileNotFoundError(f"model/{module}.py not found at {rev}: {shown.stderr.strip()}")
            continue
        present.append((module, shown.stdout))
    for module, source in present:
        for other, _ in present:
            for prefix in ("model", "xtream.model"):   # before and after the xtream namespace
                source = source.replace(f"from {prefix}.{other} import", f"from {name}.{other} import")
        source = source.replace("from model.", "from xtream.model.")
        (folder / f"{module}.py").write_text(source)
    sys.path.insert(0, str(folder.parent))
    package = importlib.import_module(name)
    for module in ("xtra", "training"):
        importlib.import_module(f"{name}.{module}")
    return package
