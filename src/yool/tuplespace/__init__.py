"""yool's tuple space: Linda lanes, lane worker pools and lazily materialised batches of agents.

- `space`: `TupleSpace` (`out`, `in_`, `rd`, `scan` on lanes; indexed; durable lanes);
- `templates`: what a template may say (equality, wildcard, type, range, prefix);
- `pool`: `LanePool`, bounded adaptive fan-out over a lane, batched and hedged;
- `batch`: `Batch`, depth x branching logical agents, materialised only when work arrives.
"""

from yool.tuplespace.space import LANE_RIGHTS, LaneInfo, SpaceError, TupleSpace, lane_allows
from yool.tuplespace.templates import Template, TemplateError, TupleError

__all__ = [
    "LANE_RIGHTS",
    "LaneInfo",
    "SpaceError",
    "Template",
    "TemplateError",
    "TupleError",
    "TupleSpace",
    "lane_allows",
]
