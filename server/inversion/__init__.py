"""Model inversion for the server: generator, base methods (registry ``inversion_methods``) and the
condensed-guided feature alignment that composes with any of them."""

from server.inversion import cmi, deepinversion, fast, generative_deepinversion  # noqa: F401  (fill the registry)
from server.inversion.base import InversionContext, InversionMethod, SyntheticBatch, build_method, inversion_methods
from server.inversion.feature_alignment import DiscriminatorInputs, FeatureAlignment, ProjectionDiscriminator
from server.inversion.generator import Generator

__all__ = [
    "DiscriminatorInputs", "FeatureAlignment", "Generator", "InversionContext", "InversionMethod",
    "ProjectionDiscriminator", "SyntheticBatch", "build_method", "inversion_methods",
]
