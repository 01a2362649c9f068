"""The pipeline: `analyze()` runs the stages in order on one `RunContext`, passing frozen records."""
from .analyze import analyze
from .config import AnalysisConfig
from .context import RunContext
from .records import AnalysisResult, PairFinding

__all__ = ["AnalysisConfig", "AnalysisResult", "PairFinding", "RunContext", "analyze"]
