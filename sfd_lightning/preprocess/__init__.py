"""Preprocessing of raw inputs: ``sfd preprocess pile`` (views, matchers, tracks, SfM, consistency checks,
pose files, visualization; :mod:`.pipeline`) and ``sfd data import-masks`` (:mod:`.import_masks`)."""
