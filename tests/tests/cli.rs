//! The `dlp` binary on the embedded cluster: `sql` output formats, `images`, and errors.

use std::process::{Command, Output};

use dlp_tests::{binary, shared_data};
use serde_json::Value;

fn dlp(args: &[&str]) -> Output {
    Command::new(binary("dlp").unwrap())
        .args(["--parallelism", "2"])
        .args(args)
        .output()
        .unwrap()
}

fn multi_channel() -> String {
    shared_data()
        .join("spark-images/images/origin/multi-channel")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn sql_json_is_an_array_of_rows_with_base64_pixels() {
    let q = format!(
        "SELECT image FROM read_images('{}', 'pathGlobFilter=BGRA*.png')",
        multi_channel()
    );
    let out = dlp(&["sql", "--format", "json", &q]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        let img = &r["image"];
        assert_eq!(
            (img["height"].as_i64(), img["width"].as_i64()),
            (Some(100), Some(100))
        );
        assert_eq!(img["nChannels"].as_i64(), Some(4));
        let data = img["data"].as_str().unwrap();
        // base64 of 40,000 bytes; the first pixel is 80 80 f8 (B G R) then alpha.
        assert_eq!(data.len(), 40_000usize.div_ceil(3) * 4);
        assert!(data.starts_with("gID4"), "{}", &data[..8]);
    }
}

#[test]
fn sql_csv_flattens_the_image_struct() {
    let q = format!(
        "SELECT image['origin'] AS origin, image['nChannels'] AS c FROM read_images('{}') ORDER BY origin",
        multi_channel()
    );
    let out = dlp(&["sql", "--format", "csv", &q]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "origin,c");
    assert_eq!(lines.len(), 5);
    assert!(
        lines[1].ends_with("/multi-channel/BGRA.png,4"),
        "{}",
        lines[1]
    );
    assert!(lines.iter().any(|l| l.ends_with("/grayscale.jpg,1")));
}

#[test]
fn images_summarizes_flowers_per_class() {
    let flowers = shared_data().join("flowers");
    let out = dlp(&["images", &flowers.to_string_lossy()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for (class, n) in [
        ("daisy", 289),
        ("dandelion", 487),
        ("roses", 263),
        ("sunflowers", 290),
        ("tulips", 99),
    ] {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(class))
            .unwrap_or_else(|| panic!("no {class} line in\n{text}"));
        assert_eq!(
            line.split_whitespace().nth(2),
            Some(n.to_string().as_str()),
            "{line}"
        );
    }
    assert!(
        text.contains("1429 files read on the embedded cluster"),
        "{text}"
    );
    assert!(text.contains(", 1 invalid"), "{text}");
    assert!(
        text.contains("LICENSE.txt"),
        "the invalid file is named:\n{text}"
    );
}

#[test]
fn a_missing_path_is_a_clear_error() {
    let out = dlp(&["sql", "SELECT count(*) FROM read_images('/no/such/dir')"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("path does not exist: file:///no/such/dir"),
        "{err}"
    );
}

#[test]
fn a_bad_option_names_the_option() {
    let q = format!(
        "SELECT count(*) FROM read_images('{}', 'dropInvalid=maybe')",
        multi_channel()
    );
    let out = dlp(&["sql", &q]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("'dropInvalid' expects true or false, got 'maybe'"),
        "{err}"
    );
}
