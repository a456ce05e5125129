"""Identity adapters: checkpoints, projections, embedding combination, LoRA, IP attention.

Import the submodules directly (`idforge.identity.checkpoint`, `.projection`, ...); this package file stays
import-light so that the faces or server code can use one part without pulling in the rest.
"""
