"""LIST (Arshad & Beksi, ICCV 2023): single-view SDF reconstruction without camera supervision.

Stage 1 :class:`ListCoarse` (image -> coarse point cloud), stage 2 :class:`ListFine` (coarse points
+ image -> SDF), warm started from a stage-1 checkpoint (``coarse_checkpoint``).
"""

from sfd_lightning.modules.list_recon.coarse import ListCoarse
from sfd_lightning.modules.list_recon.fine import ListFine

__all__ = ["ListCoarse", "ListFine"]
