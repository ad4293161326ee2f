"""Dataset checkers: ``check(root) -> list of problems`` per format (``sfd data check``)."""
