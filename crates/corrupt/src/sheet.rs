//! A contact sheet: one PNG-ready grid of labelled thumbnails (rows = corruptions, columns =
//! the original and the severities), for a person to eyeball the corruptions. Labels are drawn
//! with a built-in 5×7 bitmap font (upper case, digits, `_`), so no font files are needed.

use image::{Rgb, RgbImage};

/// Pixels per font dot.
const SCALE: u32 = 2;
const GLYPH_W: u32 = 5;
const GLYPH_H: u32 = 7;
/// Horizontal advance per character, in dots.
const ADVANCE: u32 = GLYPH_W + 1;
const PAD: u32 = 6;
const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);
const INK: Rgb<u8> = Rgb([0, 0, 0]);

/// One row: its label and its images (all the same size as the header's columns).
pub struct Row<'a> {
    /// Printed at the left of the row.
    pub label: String,
    /// The row's cells, left to right.
    pub cells: Vec<&'a RgbImage>,
}

/// Lays out `rows` under a header of `columns` labels; every cell is shrunk to `thumb`² by
/// averaging (box filter). Rows may be shorter than the header (empty cells stay white).
pub fn contact_sheet(columns: &[String], rows: &[Row<'_>], thumb: u32) -> RgbImage {
    let text_h = GLYPH_H * SCALE;
    let label_w = rows.iter().map(|r| text_width(&r.label)).max().unwrap_or(0) + 2 * PAD;
    let cell = thumb + PAD;
    let width = label_w + columns.len() as u32 * cell + PAD;
    let header = text_h + 2 * PAD;
    let height = header + rows.len() as u32 * cell + PAD;
    let mut sheet = RgbImage::from_pixel(width, height, BACKGROUND);
    for (j, name) in columns.iter().enumerate() {
        let x = label_w + j as u32 * cell + thumb.saturating_sub(text_width(name)) / 2;
        draw_text(&mut sheet, name, x, PAD);
    }
    for (i, row) in rows.iter().enumerate() {
        let y = header + i as u32 * cell;
        draw_text(
            &mut sheet,
            &row.label,
            PAD,
            y + thumb.saturating_sub(text_h) / 2,
        );
        for (j, img) in row.cells.iter().enumerate() {
            let small = shrink(img, thumb);
            let x0 = label_w + j as u32 * cell;
            for (x, yy, p) in small.enumerate_pixels() {
                sheet.put_pixel(x0 + x, y + yy, *p);
            }
        }
    }
    sheet
}

fn text_width(s: &str) -> u32 {
    (s.chars().count() as u32 * ADVANCE).saturating_sub(1) * SCALE
}

/// Box-average `img` down (or nearest up) to `side`².
fn shrink(img: &RgbImage, side: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    RgbImage::from_fn(side, side, |x, y| {
        let (x0, x1) = (
            x * w / side,
            ((x + 1) * w / side).max(x * w / side + 1).min(w),
        );
        let (y0, y1) = (
            y * h / side,
            ((y + 1) * h / side).max(y * h / side + 1).min(h),
        );
        let mut acc = [0u32; 3];
        for yy in y0..y1 {
            for xx in x0..x1 {
                let p = img.get_pixel(xx, yy);
                for c in 0..3 {
                    acc[c] += u32::from(p[c]);
                }
            }
        }
        let n = (x1 - x0) * (y1 - y0);
        Rgb(acc.map(|v| ((v + n / 2) / n) as u8))
    })
}

fn draw_text(img: &mut RgbImage, s: &str, x: u32, y: u32) {
    for (k, ch) in s.chars().enumerate() {
        let rows = glyph(ch);
        let gx = x + k as u32 * ADVANCE * SCALE;
        for (r, bits) in rows.iter().enumerate() {
            for (c, dot) in bits.bytes().enumerate() {
                if dot != b'#' {
                    continue;
                }
                for dy in 0..SCALE {
                    for dx in 0..SCALE {
                        let (px, py) = (gx + c as u32 * SCALE + dx, y + r as u32 * SCALE + dy);
                        if px < img.width() && py < img.height() {
                            img.put_pixel(px, py, INK);
                        }
                    }
                }
            }
        }
    }
}

/// The 5×7 glyph of `ch` (case-insensitive); anything without one is drawn as a blank.
///
/// A font table, one arm per character: long by nature and read as a table, so kept whole.
fn glyph(ch: char) -> [&'static str; 7] {
    match ch.to_ascii_uppercase() {
        'A' => [
            ".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#",
        ],
        'B' => [
            "####.", "#...#", "#...#", "####.", "#...#", "#...#", "####.",
        ],
        'C' => [
            ".###.", "#...#", "#....", "#....", "#....", "#...#", ".###.",
        ],
        'D' => [
            "####.", "#...#", "#...#", "#...#", "#...#", "#...#", "####.",
        ],
        'E' => [
            "#####", "#....", "#....", "####.", "#....", "#....", "#####",
        ],
        'F' => [
            "#####", "#....", "#....", "####.", "#....", "#....", "#....",
        ],
        'G' => [
            ".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####",
        ],
        'H' => [
            "#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#",
        ],
        'I' => [
            ".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###.",
        ],
        'J' => [
            "..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##..",
        ],
        'K' => [
            "#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#",
        ],
        'L' => [
            "#....", "#....", "#....", "#....", "#....", "#....", "#####",
        ],
        'M' => [
            "#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#",
        ],
        'N' => [
            "#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#",
        ],
        'O' => [
            ".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###.",
        ],
        'P' => [
            "####.", "#...#", "#...#", "####.", "#....", "#....", "#....",
        ],
        'Q' => [
            ".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#",
        ],
        'R' => [
            "####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#",
        ],
        'S' => [
            ".####", "#....", "#....", ".###.", "....#", "....#", "####.",
        ],
        'T' => [
            "#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#..",
        ],
        'U' => [
            "#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###.",
        ],
        'V' => [
            "#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#..",
        ],
        'W' => [
            "#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#.",
        ],
        'X' => [
            "#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#",
        ],
        'Y' => [
            "#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#..",
        ],
        'Z' => [
            "#####", "....#", "...#.", "..#..", ".#...", "#....", "#####",
        ],
        '0' => [
            ".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###.",
        ],
        '1' => [
            "..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###.",
        ],
        '2' => [
            ".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####",
        ],
        '3' => [
            "#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###.",
        ],
        '4' => [
            "...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#.",
        ],
        '5' => [
            "#####", "#....", "####.", "....#", "....#", "#...#", ".###.",
        ],
        '6' => [
            "..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###.",
        ],
        '7' => [
            "#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#...",
        ],
        '8' => [
            ".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###.",
        ],
        '9' => [
            ".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##..",
        ],
        '_' => [
            ".....", ".....", ".....", ".....", ".....", ".....", "#####",
        ],
        ':' => [
            ".....", "..#..", ".....", ".....", ".....", "..#..", ".....",
        ],
        _ => [
            ".....", ".....", ".....", ".....", ".....", ".....", ".....",
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout's size follows from its parts, labels leave ink, and thumbnails land in
    /// their cells.
    #[test]
    fn lays_out_rows_and_labels() {
        let red = RgbImage::from_pixel(224, 224, Rgb([200, 0, 0]));
        let cols = vec!["ORIGINAL".to_string(), "1".to_string()];
        let rows = vec![Row {
            label: "snow".into(),
            cells: vec![&red, &red],
        }];
        let sheet = contact_sheet(&cols, &rows, 56);
        let label_w = text_width("snow") + 2 * PAD;
        assert_eq!(sheet.width(), label_w + 2 * (56 + PAD) + PAD);
        assert_eq!(sheet.height(), GLYPH_H * SCALE + 2 * PAD + 56 + PAD + PAD);
        assert!(sheet.pixels().any(|p| *p == INK), "labels are drawn");
        let y = GLYPH_H * SCALE + 2 * PAD + 10;
        assert_eq!(*sheet.get_pixel(label_w + 10, y), Rgb([200, 0, 0]));
        assert_eq!(
            *sheet.get_pixel(label_w + 56 + PAD + 10, y),
            Rgb([200, 0, 0])
        );
    }
}
