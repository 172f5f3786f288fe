//! The confusion matrix as a picture: SVG (text as text) and PNG (an 8x8 bitmap font, so
//! no font files are needed). Rows are true classes, columns predicted ones; a cell's shade
//! is its share of the row (the class's recall on the diagonal), its number the count.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use font8x8::legacy::BASIC_LEGACY;
use image::{Rgb, RgbImage};

const MARGIN: u32 = 16;
const TITLE: &str = "Confusion matrix (rows: true class, columns: predicted)";

struct Layout {
    cell: u32,
    left: u32,
    top: u32,
    width: u32,
    height: u32,
}

fn layout(names: &[String]) -> Layout {
    let longest = names.iter().map(|n| n.chars().count()).max().unwrap_or(1) as u32;
    let cell = (longest.min(12) * 8 + 12).max(48);
    let left = MARGIN + longest.min(16) * 8 + 12;
    let top = MARGIN + 16 + 12 + 16;
    let k = names.len() as u32;
    let width = (left + k * cell + MARGIN).max(TITLE.len() as u32 * 8 + 2 * MARGIN);
    Layout {
        cell,
        left,
        top,
        width,
        height: top + k * cell + MARGIN + 16,
    }
}

/// Blue shade of a share in [0, 1], and whether text on it should be white.
fn shade(share: f64) -> ([u8; 3], bool) {
    let s = share.clamp(0.0, 1.0);
    let mix = |a: f64, b: f64| (a + (b - a) * s).round() as u8;
    (
        [mix(247.0, 8.0), mix(251.0, 48.0), mix(255.0, 107.0)],
        s > 0.5,
    )
}

fn shares(confusion: &[Vec<f64>]) -> Vec<Vec<f64>> {
    confusion
        .iter()
        .map(|row| {
            let total: f64 = row.iter().sum();
            row.iter()
                .map(|v| if total > 0.0 { v / total } else { 0.0 })
                .collect()
        })
        .collect()
}

fn count_text(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('~');
        t
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG text of the plot.
pub fn confusion_svg(names: &[String], confusion: &[Vec<f64>]) -> String {
    let l = layout(names);
    let sh = shares(confusion);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="13">"#,
        l.width, l.height
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{MARGIN}" y="{}" font-size="15" font-weight="bold">{}</text>"#,
        MARGIN + 12,
        escape(TITLE)
    );
    for (j, name) in names.iter().enumerate() {
        let x = l.left + j as u32 * l.cell + l.cell / 2;
        let _ = writeln!(
            s,
            r#"<text x="{x}" y="{}" text-anchor="middle">{}</text>"#,
            l.top - 8,
            escape(&truncate(name, 12))
        );
    }
    for (i, row) in confusion.iter().enumerate() {
        let y = l.top + i as u32 * l.cell;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            l.left - 8,
            y + l.cell / 2 + 4,
            escape(&truncate(&names[i], 16))
        );
        for (j, v) in row.iter().enumerate() {
            let x = l.left + j as u32 * l.cell;
            let (rgb, white) = shade(sh[i][j]);
            let _ = writeln!(
                s,
                r##"<rect x="{x}" y="{y}" width="{c}" height="{c}" fill="#{:02x}{:02x}{:02x}" stroke="#c0c0c0"/><text x="{}" y="{}" text-anchor="middle" fill="{}">{}</text>"##,
                rgb[0],
                rgb[1],
                rgb[2],
                x + l.cell / 2,
                y + l.cell / 2 + 4,
                if white { "white" } else { "black" },
                count_text(*v),
                c = l.cell
            );
        }
    }
    let _ = writeln!(s, "</svg>");
    s
}

fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str, color: [u8; 3]) {
    for (n, ch) in text.chars().enumerate() {
        let glyph = BASIC_LEGACY[if (ch as usize) < 128 {
            ch as usize
        } else {
            b'?' as usize
        }];
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) != 0 {
                    let (px, py) = (x + n as u32 * 8 + col, y + row as u32);
                    if px < img.width() && py < img.height() {
                        img.put_pixel(px, py, Rgb(color));
                    }
                }
            }
        }
    }
}

/// The PNG image of the plot.
pub fn confusion_png(names: &[String], confusion: &[Vec<f64>]) -> RgbImage {
    let l = layout(names);
    let sh = shares(confusion);
    let mut img = RgbImage::from_pixel(l.width, l.height, Rgb([255, 255, 255]));
    draw_text(&mut img, MARGIN, MARGIN, TITLE, [0, 0, 0]);
    for (j, name) in names.iter().enumerate() {
        let t = truncate(name, 12);
        let x = l.left + j as u32 * l.cell + (l.cell - 8 * t.chars().count() as u32) / 2;
        draw_text(&mut img, x, l.top - 14, &t, [0, 0, 0]);
    }
    for (i, row) in confusion.iter().enumerate() {
        let y = l.top + i as u32 * l.cell;
        let t = truncate(&names[i], 16);
        draw_text(
            &mut img,
            l.left - 8 - 8 * t.chars().count() as u32,
            y + l.cell / 2 - 4,
            &t,
            [0, 0, 0],
        );
        for (j, v) in row.iter().enumerate() {
            let x = l.left + j as u32 * l.cell;
            let (rgb, white) = shade(sh[i][j]);
            for py in y..y + l.cell {
                for px in x..x + l.cell {
                    let edge = py == y || px == x || py + 1 == y + l.cell || px + 1 == x + l.cell;
                    img.put_pixel(px, py, Rgb(if edge { [192, 192, 192] } else { rgb }));
                }
            }
            let t = count_text(*v);
            let tx = x + (l.cell - 8 * t.len() as u32) / 2;
            let color = if white { [255, 255, 255] } else { [0, 0, 0] };
            draw_text(&mut img, tx, y + l.cell / 2 - 4, &t, color);
        }
    }
    img
}

/// Writes `confusion_matrix.svg` and `confusion_matrix.png` into `dir`.
pub fn write_confusion(dir: &Path, names: &[String], confusion: &[Vec<f64>]) -> anyhow::Result<()> {
    let svg = dir.join("confusion_matrix.svg");
    std::fs::write(&svg, confusion_svg(names, confusion))
        .with_context(|| format!("cannot write {}", svg.display()))?;
    let png = dir.join("confusion_matrix.png");
    confusion_png(names, confusion)
        .save(&png)
        .with_context(|| format!("cannot write {}", png.display()))?;
    Ok(())
}

/// One curve of a training-history plot: a name, a colour and a value per epoch.
pub struct Curve<'a> {
    pub name: &'a str,
    pub color: [u8; 3],
    pub values: Vec<f64>,
}

const PANEL_W: u32 = 320;
const PANEL_H: u32 = 200;

/// Panels of curves over epochs (e.g. loss, accuracy), side by side: `(title, curves)`.
fn history_layout(panels: usize) -> (u32, u32) {
    (
        MARGIN + panels as u32 * (PANEL_W + 3 * MARGIN),
        PANEL_H + 4 * MARGIN + 48,
    )
}

fn panel_points(curve: &Curve, lo: f64, hi: f64, x0: u32, y0: u32) -> Vec<(f64, f64)> {
    let n = curve.values.len().max(2) - 1;
    curve
        .values
        .iter()
        .enumerate()
        .filter(|(_, v)| v.is_finite())
        .map(|(i, v)| {
            let x = x0 as f64 + PANEL_W as f64 * i as f64 / n as f64;
            let t = if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
            (x, y0 as f64 + PANEL_H as f64 * (1.0 - t))
        })
        .collect()
}

fn range(curves: &[Curve]) -> (f64, f64) {
    let vals = curves
        .iter()
        .flat_map(|c| c.values.iter().copied())
        .filter(|v| v.is_finite());
    let (lo, hi) = vals.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    if lo > hi {
        (0.0, 1.0)
    } else {
        (lo.min(0.0), hi.max(lo + 1e-9))
    }
}

fn hex(c: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// The training history as SVG.
pub fn history_svg(panels: &[(&str, Vec<Curve>)]) -> String {
    let (w, h) = history_layout(panels.len());
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"monospace\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (p, (title, curves)) in panels.iter().enumerate() {
        let x0 = 2 * MARGIN + p as u32 * (PANEL_W + 3 * MARGIN);
        let y0 = 2 * MARGIN + 16;
        let (lo, hi) = range(curves);
        let _ = writeln!(
            out,
            "<text x=\"{x0}\" y=\"{}\">{title} (epochs 1-{})</text>",
            MARGIN + 8,
            curves.first().map_or(0, |c| c.values.len())
        );
        let _ = writeln!(
            out,
            "<rect x=\"{x0}\" y=\"{y0}\" width=\"{PANEL_W}\" height=\"{PANEL_H}\" fill=\"none\" stroke=\"#c0c0c0\"/>"
        );
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" font-size=\"10\">{hi:.3}</text>",
            x0 + 2,
            y0 + 10
        );
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" font-size=\"10\">{lo:.3}</text>",
            x0 + 2,
            y0 + PANEL_H - 2
        );
        for (i, c) in curves.iter().enumerate() {
            let pts: Vec<String> = panel_points(c, lo, hi, x0, y0)
                .iter()
                .map(|(x, y)| format!("{x:.1},{y:.1}"))
                .collect();
            let _ = writeln!(
                out,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>",
                pts.join(" "),
                hex(c.color)
            );
            let _ = writeln!(
                out,
                "<text x=\"{}\" y=\"{}\" fill=\"{}\">{}</text>",
                x0 + i as u32 * 150,
                y0 + PANEL_H + 20,
                hex(c.color),
                c.name
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

fn draw_line(img: &mut RgbImage, a: (f64, f64), b: (f64, f64), color: [u8; 3]) {
    let steps = ((b.0 - a.0).abs().max((b.1 - a.1).abs()) as usize).max(1) * 2;
    for s in 0..=steps {
        let t = s as f64 / steps as f64;
        let (x, y) = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
        for (dx, dy) in [(0, 0), (1, 0), (0, 1)] {
            let (px, py) = (x as u32 + dx, y as u32 + dy);
            if px < img.width() && py < img.height() {
                img.put_pixel(px, py, Rgb(color));
            }
        }
    }
}

/// The training history as a PNG image.
pub fn history_png(panels: &[(&str, Vec<Curve>)]) -> RgbImage {
    let (w, h) = history_layout(panels.len());
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    for (p, (title, curves)) in panels.iter().enumerate() {
        let x0 = 2 * MARGIN + p as u32 * (PANEL_W + 3 * MARGIN);
        let y0 = 2 * MARGIN + 16;
        let (lo, hi) = range(curves);
        draw_text(&mut img, x0, MARGIN, title, [0, 0, 0]);
        for x in x0..=x0 + PANEL_W {
            img.put_pixel(x, y0, Rgb([192, 192, 192]));
            img.put_pixel(x, y0 + PANEL_H, Rgb([192, 192, 192]));
        }
        for y in y0..=y0 + PANEL_H {
            img.put_pixel(x0, y, Rgb([192, 192, 192]));
            img.put_pixel(x0 + PANEL_W, y, Rgb([192, 192, 192]));
        }
        draw_text(&mut img, x0 + 2, y0 + 2, &format!("{hi:.3}"), [96, 96, 96]);
        draw_text(
            &mut img,
            x0 + 2,
            y0 + PANEL_H - 10,
            &format!("{lo:.3}"),
            [96, 96, 96],
        );
        for (i, c) in curves.iter().enumerate() {
            let pts = panel_points(c, lo, hi, x0, y0);
            for pair in pts.windows(2) {
                draw_line(&mut img, pair[0], pair[1], c.color);
            }
            draw_text(
                &mut img,
                x0 + i as u32 * 150,
                y0 + PANEL_H + 12,
                c.name,
                c.color,
            );
        }
    }
    img
}

/// Writes `training_history.svg` and `training_history.png` into `dir`.
pub fn write_history(dir: &Path, panels: &[(&str, Vec<Curve>)]) -> anyhow::Result<()> {
    let svg = dir.join("training_history.svg");
    std::fs::write(&svg, history_svg(panels))
        .with_context(|| format!("cannot write {}", svg.display()))?;
    let png = dir.join("training_history.png");
    history_png(panels)
        .save(&png)
        .with_context(|| format!("cannot write {}", png.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_plots_draw_every_curve() {
        let panels = vec![(
            "loss",
            vec![
                Curve {
                    name: "train",
                    color: [200, 0, 0],
                    values: vec![2.0, 1.0, 0.5],
                },
                Curve {
                    name: "validation",
                    color: [0, 0, 200],
                    values: vec![2.2, 1.4, f64::NAN],
                },
            ],
        )];
        let svg = history_svg(&panels);
        assert_eq!(svg.matches("<polyline").count(), 2);
        let png = history_png(&panels);
        assert!(png.pixels().any(|p| p.0 == [200, 0, 0]));
        assert!(png.pixels().any(|p| p.0 == [0, 0, 200]));
    }

    #[test]
    fn plots_have_a_cell_per_pair() {
        let names = vec!["daisy".to_string(), "tulips".to_string()];
        let m = vec![vec![57.0, 1.0], vec![2.0, 19.0]];
        let svg = confusion_svg(&names, &m);
        assert_eq!(svg.matches("<rect x=").count(), 4);
        assert!(svg.contains(">57<") && svg.contains(">tulips<"));
        let png = confusion_png(&names, &m);
        let l = layout(&names);
        // The diagonal cell of daisy (57 of 58) is dark, the off-diagonal one light.
        let dark = png.get_pixel(l.left + 3, l.top + 3).0;
        let light = png.get_pixel(l.left + l.cell + 3, l.top + 3).0;
        assert!(dark[0] < 60 && light[0] > 200, "{dark:?} {light:?}");
    }
}
