"""The ``tftoolkit`` console script: quiets TensorFlow's start-up logs, then runs the CLI.

``import tftoolkit`` imports TensorFlow (to register the toolkit's Keras layers), and
TensorFlow's native libraries write banners (oneDNN, CPU features, absl) to the
process's standard error as they load, some before any log level applies. So, for the
command line only, TensorFlow is imported here first with file descriptor 2 pointed at
/dev/null, and its C++ log level set to errors. ``--verbose`` or ``TFTOOLKIT_VERBOSE=1``
keeps all of it. Errors raised by the import itself still reach the terminal.
"""

import os
import sys


def _import_tensorflow_quietly() -> None:
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    sys.stderr.flush()
    os.dup2(devnull, 2)
    try:
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def main() -> int:
    verbose = "--verbose" in sys.argv[1:] or os.environ.get("TFTOOLKIT_VERBOSE") == "1"
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
        _import_tensorflow_quietly()
    from tftoolkit.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
