"""Deep Implicit Templates (auto-decoder) and "Template is all you need" (single image -> SDF).

Systems: :class:`DITAutoDecoder` (per-shape codes, LSTM warper, code-free template, test-time
latent optimisation); image variants and SimCLR pre-training live in ``image_encoder`` and
``contrastive``.
"""

from sfd_lightning.modules.dit.auto_decoder import DITAutoDecoder
from sfd_lightning.modules.dit.networks import DITNetwork, LSTMWarper, TemplateDecoder

__all__ = ["DITAutoDecoder", "DITNetwork", "LSTMWarper", "TemplateDecoder"]

from sfd_lightning.modules.dit.contrastive import DITContrastive  # noqa: E402
from sfd_lightning.modules.dit.image_encoder import DITImageEndToEnd, DITImageTwoPhase  # noqa: E402

__all__ += ["DITContrastive", "DITImageEndToEnd", "DITImageTwoPhase"]
