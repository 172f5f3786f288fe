//! Bad input through the embedded cluster: nothing crashes or hangs, invalid files become
//! invalid rows (or are dropped) and are counted, empty files give no row, errors name the
//! problem. Also `CREATE EXTERNAL TABLE ... STORED AS IMAGE`.

use std::path::Path;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Int32Type, Int64Type};
use datafusion::prelude::SessionContext;
use dlp_tests::shared_data;

/// A folder with one good JPEG and every kind of bad file; returns the expected number of
/// rows that must be invalid.
fn bad_folder(dir: &Path) -> usize {
    let jpeg =
        std::fs::read(shared_data().join("flowers/daisy/100080576_f52e8ee070_n.jpg")).unwrap();
    std::fs::write(dir.join("good.jpg"), &jpeg).unwrap();
    // A JPEG cut in half still decodes (libjpeg pads it, as ImageIO does).
    std::fs::write(dir.join("truncated.jpg"), &jpeg[..jpeg.len() / 2]).unwrap();
    let mut garbage = vec![0xFF, 0xD8, 0xFF];
    garbage.extend((0..5000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    std::fs::write(dir.join("garbage.jpg"), garbage).unwrap();
    std::fs::write(dir.join("notes.txt"), "not an image").unwrap();
    std::fs::write(dir.join("empty.png"), b"").unwrap();
    // Decompression bomb: a PNG header claiming 100,000 x 100,000 pixels.
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    png.extend(13u32.to_be_bytes());
    png.extend(&ihdr);
    png.extend(crc32(&ihdr).to_be_bytes());
    png.extend(b"\0\0\0\0IEND\xaeB`\x82");
    std::fs::write(dir.join("bomb.png"), png).unwrap();
    // A link to nowhere: listed, unreadable, reported as an invalid row.
    std::os::unix::fs::symlink(dir.join("gone.jpg"), dir.join("dangling.jpg")).unwrap();
    4 // garbage.jpg, notes.txt, bomb.png, dangling.jpg
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

async fn rows(ctx: &SessionContext, sql: &str) -> Vec<RecordBatch> {
    ctx.sql(sql).await.unwrap().collect().await.unwrap()
}

fn origins_and_channels(batches: &[RecordBatch]) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for b in batches {
        let o = b.column(0).as_string::<i32>();
        let c = b.column(1).as_primitive::<Int32Type>();
        for i in 0..b.num_rows() {
            let name = o.value(i).rsplit('/').next().unwrap().to_string();
            out.push((name, c.value(i)));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn bad_files_become_invalid_rows_or_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let invalid = bad_folder(dir.path());
    let ctx = dlp_plugin::embedded::standalone_context(Some(2))
        .await
        .unwrap();
    let root = dir.path().to_string_lossy();
    let q = |opts: &str| {
        format!("SELECT image['origin'], image['nChannels'] FROM read_images('{root}'{opts})")
    };
    let kept = origins_and_channels(&rows(&ctx, &q("")).await);
    let names: Vec<&str> = kept.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "bomb.png",
            "dangling.jpg",
            "garbage.jpg",
            "good.jpg",
            "notes.txt",
            "truncated.jpg"
        ],
        "empty.png gives no row"
    );
    let bad: Vec<_> = kept
        .iter()
        .filter(|(_, c)| *c < 0)
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(bad.len(), invalid, "{bad:?}");
    assert_eq!(
        bad,
        ["bomb.png", "dangling.jpg", "garbage.jpg", "notes.txt"]
    );

    let dropped = origins_and_channels(&rows(&ctx, &q(", 'dropInvalid=true'")).await);
    assert_eq!(
        dropped,
        [
            ("good.jpg".to_string(), 3),
            ("truncated.jpg".to_string(), 3)
        ]
    );

    // A tighter pixel limit turns the real photo into an invalid row too.
    let limited =
        origins_and_channels(&rows(&ctx, &q(", 'maxPixels=1000', 'pathGlobFilter=good*'")).await);
    assert_eq!(limited, [("good.jpg".to_string(), -1)]);
}

#[tokio::test]
async fn create_external_table_stored_as_image() {
    let ctx = dlp_plugin::embedded::standalone_context(Some(2))
        .await
        .unwrap();
    let numta = shared_data().join("numta-50");
    ctx.sql(&format!(
        "CREATE EXTERNAL TABLE digits STORED AS IMAGE LOCATION '{}' OPTIONS ('withLabel' 'true')",
        numta.display()
    ))
    .await
    .unwrap()
    .collect()
    .await
    .unwrap();
    let batches = rows(
        &ctx,
        "SELECT label, count(*) AS n, min(image['height']) AS h, max(image['nChannels']) AS c \
         FROM digits GROUP BY label ORDER BY label",
    )
    .await;
    let mut seen = Vec::new();
    for b in &batches {
        let label = b.column(0).as_primitive::<Int32Type>();
        let n = b.column(1).as_primitive::<Int64Type>();
        let h = b.column(2).as_primitive::<Int32Type>();
        let c = b.column(3).as_primitive::<Int32Type>();
        for i in 0..b.num_rows() {
            seen.push((label.value(i), n.value(i), h.value(i), c.value(i)));
        }
    }
    let expected: Vec<_> = (0..10).map(|l| (l, 50, 28, 1)).collect();
    assert_eq!(seen, expected, "10 digit classes of 50 gray 28x28 images");
}
