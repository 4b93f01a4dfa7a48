"""What the notebooks call besides the engine: the machine report (01), the model's anatomy and expert
routing (02), the sampler sweep and infilling (03), and plain-text tables. Their plots are in
dgemma_helpers/plots/ (matplotlib).
"""

from .environment import EnvironmentReport, environment_report
from .infill import InfillCanvas, infill_canvas
from .introspection import expert_routing, layer_pattern, parameter_counts, vision_share, weight_sharing
from .sweep import RoundLog, SweepRow, sampler_sweep
from .tables import format_table, records


__all__ = ["EnvironmentReport", "InfillCanvas", "RoundLog", "SweepRow", "environment_report", "expert_routing",
           "format_table", "infill_canvas", "layer_pattern", "parameter_counts", "records", "sampler_sweep",
           "vision_share", "weight_sharing"]
