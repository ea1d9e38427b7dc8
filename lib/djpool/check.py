"""Build-time questions about the POOL_* config vars: ``python -m djpool.check``.

POOL_TRANSACTION_POOLER is checked here too; DATABASE_CONNECTION_POOL_URL
is not (Heroku sets it, and the app's settings choose whether to use it).

Why a separate entry point: at build time an invalid value must fail the
build (the running release stays up), while at runtime the same value only
turns pooling off. Both use ``config``, so they can never disagree.

Without arguments: prints the settings on success, or the one-line reason
on stderr and exits 1. With ``--pooling-disabled``: exits 0 when
POOL_DISABLED is one of the true words, 1 when not, so the build needs no
copy of the words.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from djpool import config


def main(environ: Mapping[str, str], argv: Sequence[str] = ()) -> int:
    """Validate POOL_* in ``environ``; return the process exit status."""
    try:
        disabled = config.is_disabled(environ)
        settings = config.pool_settings(environ)
        config.metrics_settings(environ)
        pooler = config.pooler_forced(environ)
    except config.ConfigError as error:
        print(str(error), file=sys.stderr)
        return 1
    if list(argv) == ["--pooling-disabled"]:
        return 0 if disabled else 1
    if argv:
        print(
            f"usage: python -m djpool.check [--pooling-disabled], not {' '.join(argv)!r}",
            file=sys.stderr,
        )
        return 2
    if disabled:
        print("POOL_DISABLED is set: the shim is installed but will not pool")
    elif pooler is None:
        print(settings.describe())
    else:
        print(f"{settings.describe()} {config.POOLER_VARIABLE}={int(pooler)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(os.environ, sys.argv[1:]))
