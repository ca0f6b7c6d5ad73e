"""The data layer: the embedded digit scenes, the paper data sets, splits, transforms, loaders and
the class colours. ``build_data`` (``data.build``) gives a run's data sets."""

from .build import DataBundle, build_data, scene_spec

__all__ = ["DataBundle", "build_data", "scene_spec"]
