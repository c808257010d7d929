"""The engine: Zarr volumes, ingest, the Dask cluster, blockwise execution,
reductions, backend choice, provenance and resume."""

from ..backend import gpu_available, to_backend
from ..backend import resolve as resolve_backend
from . import phases
from .blockwise import (
    Block,
    StageResult,
    as_dask,
    block_tasks,
    chunk_boxes,
    map_kernel,
    reduce_blocks,
    reduce_boxes,
    run_by_block,
    run_stage,
    store,
    write_blockwise,
)
from .cluster import apply_thread_limits, cluster
from .ingest import (
    IngestPlan,
    LabelPlan,
    ingest,
    plan_ingest,
    plan_label_ingest,
    run_ingest,
    run_label_ingest,
    source_to_dask,
)
from .reductions import count_equal, histogram, summary_stats
from .sources import Source, open_source
from .storage import Volume, choose_chunks, create_volume, open_volume

__all__ = [
    "Block", "IngestPlan", "LabelPlan", "Source", "StageResult", "Volume", "apply_thread_limits", "as_dask",
    "block_tasks", "choose_chunks", "chunk_boxes", "cluster", "count_equal", "create_volume",
    "gpu_available", "histogram", "phases", "ingest", "map_kernel", "open_source", "open_volume",
    "plan_ingest", "plan_label_ingest", "reduce_blocks", "reduce_boxes", "resolve_backend", "run_by_block",
    "run_ingest", "run_label_ingest", "run_stage", "source_to_dask", "store", "summary_stats", "to_backend",
    "write_blockwise",
]
