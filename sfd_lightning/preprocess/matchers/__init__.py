"""Matchers of ``sfd preprocess pile``: one interface (:class:`~.base.Matcher`), SIFT and DISK+LightGlue."""
