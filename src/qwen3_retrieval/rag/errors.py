"""The one error type the pipeline raises for problems a user can fix."""


class RagError(Exception):
    """A problem with the user's input or environment; its message says what happened and what to do."""
