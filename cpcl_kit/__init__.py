"""cpcl-kit: learn, run and analyse CPCL for semi-supervised semantic segmentation."""

__version__ = "0.1.0"
