"""Tool command groups of ``sfd`` (not Trainer commands): each module has ``main(argv) -> int``."""
