"""sfd_lightning: one Lightning framework for five 3D-reconstruction methods.

Conventions (tested in ``tests/``):
- SDF: negative inside, positive outside.
- Cameras inside the framework: OpenCV axes (x right, y down, z forward); converters at the
  boundaries (``geometry/cameras.py``).
- Every normalization (centre, scale) is stored with the sample and every output mapped back.
"""

__version__ = "0.1.0"
