"""Teacher-guided, latency-constrained architecture search (supernet, objective, budget fitting, report)."""

from edgefr.search.engine import SearchConfig, run_search
from edgefr.search.pipeline import run_pipeline
from edgefr.search.supernet import SuperNet

__all__ = ["SearchConfig", "SuperNet", "run_pipeline", "run_search"]
