//! Record-batch stream helpers shared by the plugin's operators.

use datafusion::arrow::array::RecordBatch;
use datafusion::common::Result;
use datafusion::execution::SendableRecordBatchStream;
use futures::future::BoxFuture;
use futures::{Stream, StreamExt, TryStreamExt};

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

/// Drives `stream` on a task of its own, up to `ahead` items ahead of its reader, so that
/// the work behind it (fetching, decoding, preprocessing) goes on while the reader is busy:
/// a stream is otherwise polled only when its reader asks for the next item. `spawn` starts
/// the task and returns a guard that aborts it when dropped (DataFusion's `SpawnedTask`, or
/// a task on another runtime). The task starts when the returned stream is first polled,
/// stops after the first error, and is aborted when the returned stream is dropped.
pub fn drive_ahead<T, S, G>(
    stream: S,
    ahead: usize,
    spawn: impl FnOnce(BoxFuture<'static, ()>) -> G + Send + 'static,
) -> impl Stream<Item = Result<T>> + Send
where
    T: Send + 'static,
    S: Stream<Item = Result<T>> + Send + 'static,
    G: Send + 'static,
{
    futures::stream::once(async move {
        let (tx, rx) = tokio::sync::mpsc::channel(ahead.max(1));
        let task = spawn(Box::pin(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    break;
                }
            }
        }));
        futures::stream::unfold((rx, task), |(mut rx, task)| async move {
            rx.recv().await.map(|item| (item, (rx, task)))
        })
    })
    .flatten()
}
