"""The errors ckpt-convert raises for expected failures.

Each message is one line that names the file or variable at fault and, where there is one, the fix.
The command line prints it without a traceback (unless ``--debug``) and exits non-zero.
"""


class ConvertError(Exception):
    """Base class of every expected failure: bad input, a failed check, a refused overwrite."""

    exit_code = 2


class CheckpointError(ConvertError):
    """A checkpoint cannot be found, parsed or trusted (bad magic, CRC mismatch, missing shard...)."""


class MappingError(ConvertError):
    """A mapping table is invalid, or does not fit the checkpoint it is applied to."""


class OutputExistsError(ConvertError):
    """An output file exists and ``--force`` was not given."""


class VariableNameError(ConvertError):
    """A variable name does not follow TF-Slim's scope conventions (empty component, no layer...)."""


class GraphError(ConvertError):
    """A ``.meta`` graph cannot be read, or the network in it cannot be recovered."""


# how many problems one error names before it counts the rest: enough to act on, short enough to read
SHOWN_PROBLEMS = 20


def join_problems(problems, separator="\n  ", limit=SHOWN_PROBLEMS):
    """The first ``limit`` of ``problems`` joined by ``separator``, then "and N more" for the rest."""
    shown = list(problems[:limit])
    if len(problems) > limit:
        shown.append(f"and {len(problems) - limit} more")
    return separator.join(shown)
