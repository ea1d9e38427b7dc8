"""Build-time check of the POOL_* config vars: ``python -m djpool.check``.

Why a separate entry point: at build time an invalid value must fail the
build (the running release stays up), while at runtime the same value only
turns pooling off. Both use ``config``, so they can never disagree.
Prints the settings on success, or the one-line reason on stderr and exits 1.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from djpool import config


def main(environ: Mapping[str, str]) -> int:
    """Validate POOL_* in ``environ``; return the process exit status."""
    try:
        disabled = config.is_disabled(environ)
        settings = config.pool_settings(environ)
    except config.ConfigError as error:
        print(str(error), file=sys.stderr)
        return 1
    if disabled:
        print("POOL_DISABLED is set: the shim is installed but will not pool")
    else:
        print(settings.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main(os.environ))
