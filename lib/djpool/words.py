"""The words a yes/no config var accepts (POOL_DISABLED, DJPOOL_DEBUG): their one home.

Free of imports on purpose: the shim loads this file by its path before it
decides whether to load djpool at all, config validates with it, and the
build asks it through ``python -m djpool.check --pooling-disabled``.
"""

from __future__ import annotations

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("", "0", "false", "no", "off")
ALLOWED = f"expected one of {'/'.join(TRUE_WORDS)} or {'/'.join(w for w in FALSE_WORDS if w)}"


def truth(raw: str | None) -> bool | None:
    """True or False for one of the words (any case, blanks around it ignored), else None."""
    word = (raw or "").strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    return None
