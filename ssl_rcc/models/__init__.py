"""3D encoders (MONAI networks) with a common interface: ``forward(x) -> (B, out_dim)``."""

from .encoders import ARCHITECTURES, ENCODER_FORMAT, Encoder, build_encoder

__all__ = ["ARCHITECTURES", "ENCODER_FORMAT", "Encoder", "build_encoder"]
