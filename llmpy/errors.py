"""The one exception type the command line turns into a clean message and a non-zero exit; optional packages
imported with that message when they are missing."""

import importlib


class LlmpyError(ValueError):
    """Bad input the user can fix: the message names the file or value and says what to do."""


def import_optional(module, what, extra):
    """The module `module` (e.g. "pyarrow.parquet"), or an LlmpyError saying that `what` needs its package and how
    to install it (directly, or as llmpy's optional dependency group `extra` in pyproject.toml)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        package = module.split(".")[0]
        raise LlmpyError(f"{what} needs the {package} package: pip install {package} "
                         f"(or pip install 'llmpy[{extra}]')") from e
