"""cpcl-kit: learn, run and analyse CPCL for semi-supervised semantic segmentation.

``cpcl_kit.predict(checkpoint, images)``: class-id maps of a trained run on your own images
(``cpcl_kit.engine.predict.predict``).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Imported on first use: `import cpcl_kit` stays free of torch and of any side effect.
    if name == "predict":
        from .engine.predict import predict

        globals()["predict"] = predict
        return predict
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), "predict"])
