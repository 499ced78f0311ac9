"""The errors a user causes, and how the programs report them.

`UserError` is raised where bad data, a bad flag or path, or a checkpoint that does not fit the
model is found, with a message that names the file, flag or value at fault. It is a ValueError,
so code that catches ValueError keeps working.

`run(main)` is absl's `app.run` for the programs (train.py, eval.py, vis.py, export.py,
predict.py, the record builders). A user error, a flag that does not parse, or a check of the
input pipeline that fails inside TensorFlow (`DATA_ERROR`) is printed as one line,
`error: MESSAGE`, on stderr, and the program exits with status 2 (`EXIT_STATUS`), without a
traceback; `--verbosity=1` (absl's flag) or the environment variable DEEPLAB_SSL_TRACEBACK=1
shows the traceback too. Any other exception is a bug and keeps its traceback.
"""
import os
import re
import sys

from absl import app, flags

EXIT_STATUS = 2
# The start of the messages of the input pipeline's checks that run inside TensorFlow (a label
# outside the classes, an undecodable record): `run` finds them in TensorFlow's error.
DATA_ERROR = "bad data: "
_ASSERTION = re.compile(r"assertion failed: \[(" + re.escape(DATA_ERROR) + r".*?)\]", re.S)


class UserError(ValueError):
    """An error of the user's input (data, flags, paths, checkpoints), not of the program."""


def pipeline_message(error):
    """The DATA_ERROR message of a TensorFlow error raised by a check of the input pipeline,
    or None for any other error."""
    match = _ASSERTION.search(str(getattr(error, "message", "")))
    return match.group(1) if match else None


def _show_traceback():
    verbosity = flags.FLAGS["verbosity"].value if "verbosity" in flags.FLAGS else 0
    return os.environ.get("DEEPLAB_SSL_TRACEBACK") == "1" or verbosity >= 1


def refuse(message):
    """Prints `error: MESSAGE` on stderr and exits with EXIT_STATUS."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_STATUS)


def _parse_flags(argv):
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        refuse(f"{error} (--helpshort lists the flags)")


def run(main):
    """Runs `main(argv)` as absl's app.run does, reporting user errors as one line."""
    import tensorflow as tf  # Here, not at the top: deeplab_ssl quiets its start first.

    def reporting_main(argv):
        try:
            return main(argv)
        except (UserError, app.UsageError) as error:
            if _show_traceback():
                raise
            refuse(error)
        except tf.errors.OpError as error:
            message = pipeline_message(error)
            if message is None or _show_traceback():
                raise
            refuse(message)
    app.run(reporting_main, flags_parser=_parse_flags)
