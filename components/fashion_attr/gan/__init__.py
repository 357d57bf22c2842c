"""MR-GAN: the multi-resolution conditional GAN with decorrelation (docs/method.md section 4)."""

from fashion_attr.gan.networks import (
    MRDiscriminator,
    MRGANSpec,
    MRGenerator,
    build_gan,
    make_condition,
)

__all__ = ["MRDiscriminator", "MRGANSpec", "MRGenerator", "build_gan", "make_condition"]
