"""The ``geoseg`` Processing provider and its setting (path of the geoseg executable)."""

from qgis.core import QgsProcessingProvider

from .algorithms import EvaluateAlgorithm, PredictBuildingsAlgorithm
from .runner import SETTING, default_executable

try:  # the Processing plugin's settings registry (present in the GUI and in qgis_process)
    from processing.core.ProcessingConfig import ProcessingConfig, Setting
except ImportError:  # pragma: no cover - Processing plugin unavailable
    ProcessingConfig = Setting = None


def geoseg_executable():
    """The configured geoseg executable (Processing option), else :func:`runner.default_executable`."""
    if ProcessingConfig is not None:
        value = ProcessingConfig.getSetting(SETTING)
        if value and str(value).strip():
            return str(value).strip()
    return default_executable()


class GeosegProvider(QgsProcessingProvider):
    def id(self):
        return "geoseg"

    def name(self):
        return "geoseg"

    def longName(self):
        return "geoseg building segmentation"

    def load(self):
        if ProcessingConfig is not None:
            ProcessingConfig.settingIcons[self.name()] = self.icon()
            ProcessingConfig.addSetting(
                Setting(
                    self.name(),
                    SETTING,
                    "geoseg executable (path of the geoseg command of a Python environment)",
                    default_executable(),
                    valuetype=Setting.FILE,
                )
            )
            ProcessingConfig.readSettings()
        self.refreshAlgorithms()
        return True

    def unload(self):
        if ProcessingConfig is not None:
            ProcessingConfig.removeSetting(SETTING)

    def loadAlgorithms(self):
        self.addAlgorithm(PredictBuildingsAlgorithm())
        self.addAlgorithm(EvaluateAlgorithm())
