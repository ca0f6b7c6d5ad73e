"""Names and numbers every module shares, defined once.

This module imports nothing from the kit, so anything may import it.
"""

# Label value of pixels without a label: VOC's object borders, unlabeled images, CutMix truth
# where unknown. Losses and metrics skip it.
IGNORE_INDEX = 255

METHODS = ("supervised", "cps", "cpcl")
DATASETS = ("digits", "voc", "cityscapes")
NUM_CLASSES = {"digits": 11, "voc": 21, "cityscapes": 19}
# How the union label is chosen where the nets disagree (method notes §4): by the class-wise
# disagreement indicator (the paper) or by the more confident net (an ablation).
UNION_RULES = ("disagreement", "confidence")
# Which pseudo label each net of a CPCL run learns from, (net 1, net 2): the paper's pair and the
# two single-kind ablations.
TARGET_PAIRS = (("inter", "union"), ("inter", "inter"), ("union", "union"))
