"""Named numpy arrays <-> one Arrow IPC stream, for large embedding responses over HTTP.

Each array becomes one column holding a single list row (its flattened values); shapes and
dtypes travel in the schema metadata. Reading back is zero-copy into numpy.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

ARROW_STREAM = "application/vnd.apache.arrow.stream"


def arrays_to_ipc(arrays: dict[str, np.ndarray]) -> bytes:
    columns, shapes = {}, {}
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        shapes[name] = {"shape": list(arr.shape), "dtype": arr.dtype.str}
        columns[name] = pa.LargeListArray.from_arrays(pa.array([0, arr.size], pa.int64()), pa.array(arr.reshape(-1)))
    table = pa.table(columns).replace_schema_metadata({"tightdistill.shapes": json.dumps(shapes)})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def ipc_to_arrays(data: bytes) -> dict[str, np.ndarray]:
    table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
    meta = json.loads(table.schema.metadata[b"tightdistill.shapes"])
    out = {}
    for name, info in meta.items():
        values = table.column(name).chunk(0).values.to_numpy(zero_copy_only=False)
        out[name] = values.astype(np.dtype(info["dtype"]), copy=False).reshape(info["shape"])
    return out
