"""The one exception type for mistakes a user can fix (bad file, bad flag, bad record).

The CLI turns it into a one-line message and exit code 2; anything else is a bug and
keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, reported without a traceback.

    ``where`` names the place (``file:line``, ``file``, ``--flag``, ``config key``) and
    ``field`` the field at fault, so every message reads the same way.
    """

    def __init__(self, message: str, where: str | None = None, field: str | None = None):
        self.where, self.field, self.detail = where, field, message
        parts = [p for p in (where, f"field '{field}'" if field else None) if p]
        super().__init__(f"{': '.join(parts)}: {message}" if parts else message)
