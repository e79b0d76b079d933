"""Exceptions raised by the data layer; their messages say how to fix the problem."""


class DataNotFoundError(FileNotFoundError):
    """A dataset's files are missing and cannot be produced on this machine."""


class DataCorruptError(RuntimeError):
    """A dataset file exists but has the wrong content (checksum, size or format)."""
