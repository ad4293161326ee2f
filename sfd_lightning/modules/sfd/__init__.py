"""SfD (Structure from Duplicates): shared geometry, visibility and material of a pile of duplicates.

The LightningCLI class is :class:`~sfd_lightning.modules.sfd.system.SfD`
(``class_path: sfd_lightning.modules.sfd.SfD``) with ``stage`` geometry | visibility | material.
"""

from sfd_lightning.modules.sfd.system import SfD

__all__ = ["SfD"]
