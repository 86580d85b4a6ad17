"""ssl_rcc: self-supervised 3D encoders and few-label heads for renal cell carcinoma imaging.

DCE-MRI kinetics live in the sibling package :mod:`kinetics`, which this package uses and which
never imports torch.
"""

__version__ = "0.1.0"
