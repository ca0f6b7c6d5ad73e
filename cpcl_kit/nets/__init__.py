"""The nets: DeepLabV3+ (``deeplab``), the digit backbone pre-training (``pretrain``), summaries."""
