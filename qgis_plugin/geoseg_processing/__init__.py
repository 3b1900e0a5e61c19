"""geoseg Processing provider for QGIS (>= 3.22): "Predict buildings" and "Evaluate" via the geoseg CLI."""


def classFactory(iface):  # noqa: N802 (QGIS plugin entry point)
    from .plugin import GeosegProcessingPlugin

    return GeosegProcessingPlugin(iface)
