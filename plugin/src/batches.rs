//! Record-batch stream helpers shared by the plugin's operators.

use datafusion::arrow::array::RecordBatch;
use datafusion::common::Result;
use datafusion::execution::SendableRecordBatchStream;
use futures::{Stream, TryStreamExt};

/// Re-cuts a stream into batches of at most `rows` rows (zero-copy slices), so that an
/// operator's unit of work (images decoded, images per forward pass) is bounded.
pub fn rechunk(
    input: SendableRecordBatchStream,
    rows: usize,
) -> impl Stream<Item = Result<RecordBatch>> + Send {
    let rows = rows.max(1);
    input
        .map_ok(move |batch| {
            let n = batch.num_rows();
            futures::stream::iter(
                (0..n)
                    .step_by(rows)
                    .map(move |off| Ok(batch.slice(off, rows.min(n - off))))
                    .collect::<Vec<Result<RecordBatch>>>(),
            )
        })
        .try_flatten()
}
