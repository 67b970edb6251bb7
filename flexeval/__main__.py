"""`python -m flexeval ...`: the CLI, also as `torchrun -m flexeval run ...` / `accelerate launch -m flexeval run ...`."""

import os
import sys


def unshadow(path: list, modules: dict) -> list[str]:
    """Started from the folder that holds a checkout named `flexeval` (`git clone .../flexeval`, then
    `torchrun -m flexeval` one level up), `-m` puts that folder first on sys.path and the checkout,
    which has no __init__.py, is imported as a namespace package `flexeval`: its `results/` output
    folder stood in for flexeval.results and __init__ never ran (ImportError: __version__). Drop such
    sys.path entries and the half-imported modules, so the installed package is imported; returns
    the entries dropped."""
    pkg = modules.get("flexeval")
    if pkg is None or getattr(pkg, "__file__", None):  # the real package (a regular one has __file__)
        return []
    dropped = [p for p in path if os.path.isdir(os.path.join(p or ".", "flexeval"))
               and not os.path.isfile(os.path.join(p or ".", "flexeval", "__init__.py"))]
    path[:] = [p for p in path if p not in dropped]
    for name in [m for m in modules if m == "flexeval" or m.startswith("flexeval.")]:
        if modules[name] is not modules.get("__main__"):
            del modules[name]
    return dropped


unshadow(sys.path, sys.modules)

from flexeval.cli import main  # noqa: E402  (after unshadow: the installed package)

if __name__ == "__main__":
    main()
