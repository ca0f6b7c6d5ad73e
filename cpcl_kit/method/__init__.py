"""The method: CPCL's pseudo labels and weights (``cpcl``), the training steps of every method
(``steps``), the student views (``perturb``) and pseudo labels on a few scenes (``scenes``)."""
