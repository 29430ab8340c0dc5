"""Reading experiments written by earlier versions: classes pickled under a module path that moved.

Tune pickles its callbacks, and with them config objects, into an experiment's tuner.pkl and
experiment state; a pickle names each class by module path. `old_module_paths()` lends the old
paths to the process while an experiment is restored, and takes them back afterwards:

    0.1    cifar_tune.orchestrator.config  ->  cifar_tune.config

Classes renamed or dropped inside a module that stayed keep an alias there (config.py:
TuneConfigSection, DebugConfig). tests/fixtures/experiment-v0.1 and experiment-pre21 (written
before issue 21 moved modules) prove such experiments still analyze and resume.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager

OLD_MODULE_PATHS = {"cifar_tune.orchestrator.config": "cifar_tune.config"}


@contextmanager
def old_module_paths() -> Iterator[None]:
    """While open, `import cifar_tune.orchestrator.config` (what unpickling does) gives today's
    module; paths already imported are left as they were."""
    lent = [old for old in OLD_MODULE_PATHS if old not in sys.modules]
    for old in lent:
        sys.modules[old] = importlib.import_module(OLD_MODULE_PATHS[old])
    try:
        yield
    finally:
        for old in lent:
            sys.modules.pop(old, None)
