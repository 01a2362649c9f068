"""The pipeline: `analyze()` runs the stages in order on one run context."""
from .analyze import AnalysisResult, PairFinding, analyze
from .config import AnalysisConfig

__all__ = ["AnalysisConfig", "AnalysisResult", "PairFinding", "analyze"]
