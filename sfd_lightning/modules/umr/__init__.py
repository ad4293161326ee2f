"""UMR (Li et al., ECCV 2020): self-supervised single-view mesh, texture and camera (methods/umr.md).

Modules: ``template`` (y-symmetric icosphere, UV sampler), ``networks`` (ResNet-18 encoder, heads,
texture flow, discriminator), ``cameras`` (weak-perspective quaternion cameras), ``losses``,
``system`` (shared forward, rendering, evaluation, export), ``stage1`` / ``stage2`` (the two
training stages, LightningCLI models), ``semantic`` (semantic UV template), ``export`` (textured
OBJ + turntable per image). Tool: ``sfd umr build-template`` (:mod:`sfd_lightning.tools.umr`).
"""
