"""The package's exceptions."""


class DlpError(Exception):
    """A request the cluster refused or a query that failed there; the message is the
    server's."""


class JobFailed(DlpError):
    """A pipeline job ended in failure; `status` is its last status (with `error`)."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status or {}


class JobCancelled(JobFailed):
    """A pipeline job was cancelled."""
