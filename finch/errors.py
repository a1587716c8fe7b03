"""The mistakes a user can make, as types: the one place that says what is the user's to fix.

The CLI maps exactly these to exit code 2 and prints their message without a traceback. Anything else that
escapes is a bug in finch (or in a library under it): the CLI shows its traceback and exits 1, asking for a report.
So a check that finds a user's mistake raises one of these, with a message that names the problem, where it is
and the fix; it never raises a bare `ValueError` or `KeyError` that could as well come from a bug.

Each type also derives from the builtin exception the Python API has always raised (`ValueError`, `TypeError`),
so code written against HuggingFace's behaviour (`except ValueError`) keeps working.

Below them, the one way a run ends that is neither the user's mistake nor a bug: `NonFiniteLossError`.
"""

from __future__ import annotations

import logging
import re


class UserError(Exception):
    """A mistake in the user's flags, config, data, model folder or output folder: the message says the fix."""


class DataError(UserError, ValueError):
    """A problem in the user's data (missing column, unmapped label, unreadable file...)."""


class ConfigError(UserError, ValueError):
    """An invalid argument, flag or config value, or an invalid combination of them."""


class UnknownArgumentError(UserError, TypeError):
    """An argument name that does not exist (the message suggests the closest ones)."""


class ModelError(UserError, ValueError):
    """A model that cannot be used: a missing folder, missing files, a hub name while offline, a wrong head."""


class ResumeError(UserError, ValueError):
    """A checkpoint that cannot be resumed: another run's, another data set's, another configuration's."""


class OutputError(UserError, ValueError):
    """An output path that cannot be written, or would destroy something the user owns."""


class NonFiniteLossError(RuntimeError):
    """Training stopped after too many consecutive steps with a NaN/Inf loss or gradient norm (the CLI: exit 1,
    no traceback; the checkpoints before it are whole)."""


# A password in a URL (`scheme://user:PASSWORD@host`, up to the token's last "@", so a malformed URL, a port typo or
# an unescaped "@" in the password is masked too) or given as a key=value (a libpq DSN, a query string).
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@'\"]*):[^\s'\"]*@")
_KEY_PASSWORD = re.compile(r"(?P<head>\b(?:password|passwd|pwd|token|secret|api_key)\s*=\s*)[^\s&;,'\")]+",
                           re.IGNORECASE)


def mask_secrets(text: object) -> str:
    """`text` with every password in a URL or DSN replaced by `***`: the one function through which finch shows
    any URL, connection string or message that may hold one, whether it parses or not."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}:***@", str(text))
    return _KEY_PASSWORD.sub(lambda m: f"{m['head']}***", text)


class MaskSecretsFilter(logging.Filter):
    """On finch's logger: every message it logs goes through `mask_secrets` (a URL in a library's error, a DSN in a
    warning), so no path through the code can print a password."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True
