"""``python -m djpool COMMAND``: djpool's commands for a running app (``heroku run ...``).

doctor    does the connection budget fit the database server? (djpool.doctor)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

USAGE = "usage: python -m djpool doctor [--help] [options]"


def main(environ: Mapping[str, str], argv: Sequence[str]) -> int:
    """Run the command named by ``argv[0]``; return the exit status."""
    if argv and argv[0] == "doctor":
        from djpool import doctor

        return doctor.main(environ, argv[1:])
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(os.environ, sys.argv[1:]))
