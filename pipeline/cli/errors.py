"""What a command raises when it cannot do its job: the message says what to do."""


class CommandError(Exception):
    """The command cannot do its job; the message says what to do. Exit status 2."""
