"""The one exception type the CLI turns into a one-line message."""


class DeepSpeakerError(Exception):
    """A problem the user can fix (bad input, missing model, wrong settings); its message is one line."""
