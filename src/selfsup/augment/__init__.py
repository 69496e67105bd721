from .views import ViewConfig, ViewAugment, normalize, view_preset

__all__ = ["ViewConfig", "ViewAugment", "normalize", "view_preset"]
