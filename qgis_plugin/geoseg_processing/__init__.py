"""geoseg Processing provider for QGIS (>= 3.22): "Predict buildings" and "Evaluate" via the geoseg CLI."""


def classFactory(iface):
    from .plugin import GeosegProcessingPlugin

    return GeosegProcessingPlugin(iface)
