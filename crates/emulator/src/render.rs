//! The pictures the emulator makes: a procedural scene seeded by the request, with the prompt
//! drawn on it, edits that visibly derive from their inputs, and PNG encoding.

use std::io::Cursor;

use gptimage_types::{GenerateRequest, InputFidelity, Quality};
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ImageEncoder, ImageReader, Limits, Rgb, RgbImage};

/// The largest width or height of an input image the emulator decodes.
const MAX_INPUT_SIDE: u32 = 8192;

/// Renders the result of `request` (editing `inputs` when it is image-to-image) as PNG bytes.
///
/// The picture is a deterministic function of the request and the inputs: the same request gives
/// the same bytes.
pub(crate) fn render_png(request: &GenerateRequest, inputs: &[RgbImage]) -> Vec<u8> {
    encode_png(&render(request, inputs))
}

/// Renders the result of `request` as pixels.
pub(crate) fn render(request: &GenerateRequest, inputs: &[RgbImage]) -> RgbImage {
    let (width, height) = request.effective_size().dimensions();
    let quality = request.effective_quality();
    let mut seed = Fnv::new();
    seed.write(request.prompt().as_bytes());
    seed.write(request.effective_size().as_str().as_bytes());
    seed.write(quality.as_str().as_bytes());
    for input in inputs {
        seed.write(input.as_raw());
    }
    let mut rng = SplitMix(seed.finish());

    let scene = scene(width, height, quality, &mut rng);
    let mut picture = if inputs.is_empty() {
        scene
    } else {
        let fidelity = request.input_fidelity().unwrap_or_default();
        edit(&scene, inputs, fidelity)
    };
    let label = format!(
        "gptimage-emulator  {}  {}{}",
        request.effective_size(),
        quality,
        if inputs.is_empty() { "" } else { "  edit" }
    );
    draw_caption(&mut picture, request.prompt(), &label);
    picture
}

/// A procedural landscape: a sky gradient, a sun, soft shapes and a ridge. Quality decides the
/// detail: `low` is drawn at 1/8 resolution and shows its pixels, `medium` at 1/2 and smoothed,
/// `high` at full resolution with more shapes and texture.
fn scene(width: u32, height: u32, quality: Quality, rng: &mut SplitMix) -> RgbImage {
    let (scale, shapes) = match quality {
        Quality::Low => (8, 4),
        Quality::High => (1, 16),
        _ => (2, 9),
    };
    let (w, h) = (width / scale, height / scale);
    let top = hsv(rng.unit(), 0.55, 0.95);
    let bottom = hsv(rng.unit(), 0.7, 0.45);
    let sun = (
        rng.unit() * 0.8 + 0.1,
        rng.unit() * 0.3 + 0.1,
        rng.unit() * 0.08 + 0.05,
    );
    let sun_color = hsv(rng.unit() * 0.15, 0.6, 1.0);
    let blobs: Vec<_> = (0..shapes)
        .map(|_| {
            let color = hsv(rng.unit(), 0.5 + rng.unit() * 0.4, 0.5 + rng.unit() * 0.5);
            (
                rng.unit(),
                rng.unit() * 0.8,
                0.03 + rng.unit() * 0.12,
                color,
            )
        })
        .collect();
    let ridge = (
        rng.unit() * 6.0 + 2.0,
        rng.unit() * std::f32::consts::TAU,
        rng.unit() * 0.1 + 0.05,
    );
    let ridge_color = hsv(rng.unit(), 0.5, 0.25);
    let aspect = w as f32 / h as f32;

    let small = RgbImage::from_fn(w, h, |x, y| {
        let (u, v) = ((x as f32 + 0.5) / w as f32, (y as f32 + 0.5) / h as f32);
        let mut c = mix(top, bottom, v);
        let d = ((u - sun.0) * aspect).hypot(v - sun.1);
        c = mix(c, sun_color, smooth(sun.2 * 1.4, sun.2, d));
        for &(bx, by, r, color) in &blobs {
            let d = ((u - bx) * aspect).hypot(v - by);
            c = mix(c, color, 0.7 * smooth(r, r * 0.8, d));
        }
        let line = 0.72 + ridge.2 * (u * ridge.0 + ridge.1).sin() + 0.03 * (u * 23.0).sin();
        c = mix(c, ridge_color, smooth(line - 0.004, line + 0.004, v));
        if quality == Quality::High {
            // Fine texture that only full resolution can show.
            let t = ((x as f32 * 0.9).sin() * (y as f32 * 0.7).cos()) * 0.04;
            c = [c[0] + t, c[1] + t, c[2] + t];
        }
        to_rgb(c)
    });
    match quality {
        Quality::Low => upscale_nearest(&small, width, height),
        Quality::High => small,
        _ => image::imageops::resize(&small, width, height, image::imageops::Triangle),
    }
}

/// Blends the inputs (resized to cover the output) with the prompt's scene. High fidelity keeps
/// the input dominant; low fidelity lets the scene take over and posterizes the input.
fn edit(scene: &RgbImage, inputs: &[RgbImage], fidelity: InputFidelity) -> RgbImage {
    let (width, height) = scene.dimensions();
    let covered: Vec<RgbImage> = inputs.iter().map(|i| cover(i, width, height)).collect();
    let (keep, levels) = match fidelity {
        InputFidelity::Low => (0.45, Some(4.0)),
        _ => (0.8, None),
    };
    RgbImage::from_fn(width, height, |x, y| {
        let mut sum = [0.0f32; 3];
        for input in &covered {
            let p = input.get_pixel(x, y);
            for (s, v) in sum.iter_mut().zip(p.0) {
                *s += f32::from(v) / 255.0;
            }
        }
        let mut base = sum.map(|s| s / covered.len() as f32);
        if let Some(levels) = levels {
            base = base.map(|v| (v * levels).round() / levels);
        }
        let s = scene.get_pixel(x, y).0.map(|v| f32::from(v) / 255.0);
        to_rgb(mix(s, base, keep))
    })
}

/// Scales `image` to fill `width`×`height`, cropping what overflows, keeping its aspect ratio.
fn cover(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (iw, ih) = image.dimensions();
    let scale = (width as f32 / iw as f32).max(height as f32 / ih as f32);
    let (sw, sh) = (
        ((iw as f32 * scale).ceil() as u32).max(width),
        ((ih as f32 * scale).ceil() as u32).max(height),
    );
    let scaled = image::imageops::resize(image, sw, sh, image::imageops::Triangle);
    image::imageops::crop_imm(&scaled, (sw - width) / 2, (sh - height) / 2, width, height)
        .to_image()
}

fn upscale_nearest(small: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = small.dimensions();
    RgbImage::from_fn(width, height, |x, y| {
        *small.get_pixel((x * w / width).min(w - 1), (y * h / height).min(h - 1))
    })
}

/// Draws the prompt, wrapped, on a dark band at the bottom, and `label` at the top left.
fn draw_caption(image: &mut RgbImage, prompt: &str, label: &str) {
    let (width, height) = image.dimensions();
    let scale = 3;
    let glyph = 8 * scale;
    let per_line = ((width - 2 * glyph) / glyph) as usize;
    let lines = wrap(prompt, per_line, 4);
    let band = (lines.len() as u32 * (glyph + 6) + glyph).min(height / 2);
    shade(image, 0, height - band, width, band, 0.55);
    for (i, line) in lines.iter().enumerate() {
        let y = height - band + glyph / 2 + i as u32 * (glyph + 6);
        draw_text(image, line, glyph, y, scale, Rgb([255, 255, 255]));
    }
    shade(image, 0, 0, width, 8 * 2 + 12, 0.4);
    draw_text(image, label, 8, 6, 2, Rgb([230, 230, 230]));
}

/// Splits `text` into at most `max_lines` lines of at most `width` characters, at spaces where
/// possible; an ellipsis marks text that did not fit.
fn wrap(text: &str, width: usize, max_lines: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut current = String::new();
    let words = text.split_whitespace().flat_map(|word| {
        let chars: Vec<char> = word.chars().collect();
        chars
            .chunks(width.max(1))
            .map(|c| c.iter().collect::<String>())
            .collect::<Vec<_>>()
    });
    for word in words {
        let len = current.chars().count();
        if len > 0 && len + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(&word);
    }
    if !current.is_empty() {
        lines.push(current);
    }
    if lines.len() > max_lines {
        lines.truncate(max_lines);
        let last = &mut lines[max_lines - 1];
        let kept: String = last.chars().take(width.saturating_sub(3)).collect();
        *last = format!("{kept}...");
    }
    lines
}

fn shade(image: &mut RgbImage, x0: u32, y0: u32, w: u32, h: u32, amount: f32) {
    let (width, height) = image.dimensions();
    for y in y0..(y0 + h).min(height) {
        for x in x0..(x0 + w).min(width) {
            let p = image.get_pixel_mut(x, y);
            p.0 = p.0.map(|v| (f32::from(v) * (1.0 - amount)) as u8);
        }
    }
}

/// Draws `text` with the 8×8 bitmap font, each font pixel `scale`×`scale` (see [`glyph`] for
/// the characters the font lacks).
fn draw_text(image: &mut RgbImage, text: &str, x0: u32, y0: u32, scale: u32, color: Rgb<u8>) {
    let (width, height) = image.dimensions();
    for (i, c) in text.chars().enumerate() {
        let bitmap = glyph(c);
        let gx = x0 + i as u32 * 8 * scale;
        if gx + 8 * scale > width {
            break;
        }
        for (row, bits) in bitmap.iter().enumerate() {
            for col in 0..8u32 {
                if bits & (1 << col) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (x, y) = (gx + col * scale + dx, y0 + row as u32 * scale + dy);
                        if x < width && y < height {
                            image.put_pixel(x, y, color);
                        }
                    }
                }
            }
        }
    }
}

/// The 8×8 bitmap of `c` (bit 0 of a row is its leftmost pixel). Letters of the Latin scripts
/// that font8x8 lacks are composed: a base letter and its marks (by canonical decomposition:
/// `ğ` is `g` and a breve), or drawn here (`ı`, `œ`, `ł`, …). A character of a script the font
/// lacks shows its code point in hexadecimal in a frame, as Unicode's last-resort font does.
fn glyph(c: char) -> [u8; 8] {
    if let Some(bitmap) = font_glyph(c).or_else(|| own_glyph(c)) {
        return bitmap;
    }
    compose(c).unwrap_or_else(|| last_resort(c))
}

fn font_glyph(c: char) -> Option<[u8; 8]> {
    use font8x8::UnicodeFonts;
    font8x8::BASIC_FONTS
        .get(c)
        .or_else(|| font8x8::LATIN_FONTS.get(c))
        .or_else(|| font8x8::GREEK_FONTS.get(c))
        .or_else(|| font8x8::HIRAGANA_FONTS.get(c))
}

/// Rows of a bitmap from pictures: `X` is ink.
const fn rows<const N: usize>(picture: [&str; N]) -> [u8; N] {
    let mut out = [0u8; N];
    let mut r = 0;
    while r < N {
        let bytes = picture[r].as_bytes();
        let mut x = 0;
        while x < bytes.len() && x < 8 {
            if bytes[x] == b'X' {
                out[r] |= 1 << x;
            }
            x += 1;
        }
        r += 1;
    }
    out
}

/// Latin letters with no decomposition that font8x8 lacks.
fn own_glyph(c: char) -> Option<[u8; 8]> {
    let with = |base: char, extra: [u8; 8]| {
        font_glyph(base).map(|mut b| {
            for (row, bits) in b.iter_mut().zip(extra) {
                *row |= bits;
            }
            b
        })
    };
    let bar = |row: usize, bits: u8| {
        let mut extra = [0u8; 8];
        extra[row] = bits;
        extra
    };
    Some(match c {
        // Dotless i and j: the letter without its dot (the top two rows).
        'ı' | 'ȷ' => {
            let mut b = font_glyph(if c == 'ı' { 'i' } else { 'j' })?;
            b[0] = 0;
            b[1] = 0;
            b
        }
        'Đ' | 'Ɖ' => with('D', bar(3, rows(["XXX....."])[0]))?,
        'đ' => with('d', bar(1, rows(["...XXXX."])[0]))?,
        'Ħ' => with('H', bar(1, rows(["XXXXXXXX"])[0]))?,
        'ħ' => with('h', bar(1, rows(["XXXX...."])[0]))?,
        'Ŧ' => with('T', bar(3, rows(["..XXXX.."])[0]))?,
        'ŧ' => with('t', bar(4, rows(["XXXXX..."])[0]))?,
        'Ł' => with(
            'L',
            rows(["", "", "...X....", "..X.....", ".X......", "", "", ""]),
        )?,
        'ł' => with(
            'l',
            rows(["", "", "....X...", "...X....", "..X.....", "", "", ""]),
        )?,
        'Ŀ' => with('L', bar(3, rows(["....X..."])[0]))?,
        'ŀ' => with('l', bar(3, rows(["......X."])[0]))?,
        'ŉ' => with('n', bar(0, rows(["X......."])[0]))?,
        'Œ' => rows([
            ".XXXXXX.", "XX.XX...", "XX.XX...", "XX.XXXX.", "XX.XX...", "XX.XX...", ".XXXXXX.",
            "........",
        ]),
        'œ' => rows([
            "........", "........", ".XX.XX..", "X..X..X.", "X..XXXX.", "X..X....", ".XX.XXX.",
            "........",
        ]),
        'Ŋ' => rows([
            "XX...XX.", "XXX..XX.", "XXXX.XX.", "XX.XXXX.", "XX..XXX.", "XX...XX.", ".....XX.",
            "...XXX..",
        ]),
        'ŋ' => rows([
            "........", "........", "XXXXX...", "XX..XX..", "XX..XX..", "XX..XX..", "....XX..",
            "..XXX...",
        ]),
        'ĸ' => rows([
            "........", "........", "XX..XX..", "XX.XX...", "XXXX....", "XX.XX...", "XX..XX..",
            "........",
        ]),
        'ſ' => rows([
            "...XXX..", "..XX....", "..XX....", "..XX....", "..XX....", "..XX....", "..XX....",
            "........",
        ]),
        'Ĳ' => rows([
            "XX...XX.", "XX...XX.", "XX...XX.", "XX...XX.", "XX...XX.", "XX.X.XX.", "XX..XX..",
            "........",
        ]),
        'ĳ' => rows([
            "XX...XX.", "........", "XX...XX.", "XX...XX.", "XX...XX.", "XX...XX.", "XX...XX.",
            ".....XX.",
        ]),
        _ => return modified(c),
    })
}

/// The other letters of Latin Extended-B and Additional (African, phonetic and historical
/// letters): a letter they resemble, with a stroke, a hook, or mirrored or turned; digraphs
/// (`ǆ`, `ǉ`, `ǳ`) as their two letters at half width.
fn modified(c: char) -> Option<[u8; 8]> {
    enum M {
        Stroke,
        Hook,
        Mirror,
        Turn,
        Same,
    }
    use M::*;
    let (base, how) = match c {
        'ƀ' => ('b', Stroke),
        'Ɨ' => ('I', Stroke),
        'ƚ' => ('l', Stroke),
        'ƶ' => ('z', Stroke),
        'Ƶ' => ('Z', Stroke),
        'Ǥ' => ('G', Stroke),
        'ǥ' => ('g', Stroke),
        'Ⱥ' => ('A', Stroke),
        'Ȼ' => ('C', Stroke),
        'ȼ' => ('c', Stroke),
        'Ƚ' => ('L', Stroke),
        'Ⱦ' => ('T', Stroke),
        'Ƀ' => ('B', Stroke),
        'Ʉ' => ('U', Stroke),
        'Ɇ' => ('E', Stroke),
        'ɇ' => ('e', Stroke),
        'Ɉ' => ('J', Stroke),
        'ɉ' => ('j', Stroke),
        'Ɍ' => ('R', Stroke),
        'ɍ' => ('r', Stroke),
        'Ɏ' => ('Y', Stroke),
        'ɏ' => ('y', Stroke),
        'ƻ' => ('2', Stroke),
        'Ƃ' | 'Ƅ' => ('b', Hook),
        'ƃ' | 'ƅ' => ('b', Same),
        'Ƌ' => ('d', Hook),
        'ƌ' => ('d', Same),
        'Ɓ' => ('B', Hook),
        'Ƈ' => ('C', Hook),
        'ƈ' => ('c', Hook),
        'Ɗ' => ('D', Hook),
        'Ƒ' => ('F', Hook),
        'ƒ' => ('f', Hook),
        'Ɠ' => ('G', Hook),
        'Ƙ' => ('K', Hook),
        'ƙ' => ('k', Hook),
        'Ƥ' => ('P', Hook),
        'ƥ' => ('p', Hook),
        'Ƭ' | 'Ʈ' => ('T', Hook),
        'ƭ' | 'ƫ' | 'ȶ' => ('t', Hook),
        'Ʋ' => ('V', Hook),
        'Ƴ' => ('Y', Hook),
        'ƴ' => ('y', Hook),
        'Ȥ' | 'ɀ' => ('Z', Hook),
        'ȥ' => ('z', Hook),
        'Ɲ' | 'Ƞ' => ('N', Hook),
        'ƞ' | 'ȵ' => ('n', Hook),
        'ȡ' => ('d', Hook),
        'ȴ' => ('l', Hook),
        'ȿ' => ('s', Hook),
        'Ɋ' => ('Q', Hook),
        'ɋ' => ('q', Hook),
        'ƕ' | 'Ƕ' => ('h', Hook),
        'Ʀ' => ('R', Hook),
        'Ǝ' => ('E', Mirror),
        'Ɔ' => ('C', Mirror),
        'Ƨ' => ('S', Mirror),
        'ƨ' => ('s', Mirror),
        'Ƹ' => ('3', Mirror),
        'ƹ' | 'ƺ' => ('3', Mirror),
        'ǝ' | 'Ə' => ('e', Turn),
        'Ɯ' => ('M', Turn),
        'Ʌ' => ('V', Turn),
        'Ʊ' => ('Ω', Turn),
        'ƍ' => ('δ', Turn),
        'Ɛ' => ('ε', Same),
        'Ɣ' => ('γ', Same),
        'Ɩ' => ('ι', Same),
        'Ʃ' => ('Σ', Same),
        'Ɵ' => ('θ', Same),
        'ƛ' => ('λ', Stroke),
        'ẟ' => ('δ', Same),
        'Ʒ' | 'ʒ' | 'Ȝ' | 'ȝ' => ('3', Same),
        'Ǯ' | 'ǯ' => ('3', Hook),
        'Ƽ' | 'ƽ' => ('5', Same),
        'ƾ' => ('?', Mirror),
        'Ƿ' | 'ƿ' => ('p', Hook),
        'Ȣ' | 'ȣ' => ('8', Same),
        'ǀ' => ('|', Same),
        'ǁ' => ('"', Same),
        'ǂ' => ('#', Same),
        'ǃ' => ('!', Same),
        'Ɂ' | 'ɂ' => ('?', Same),
        'Ƣ' | 'ƣ' => ('q', Hook),
        'ẜ' | 'ẝ' => ('ſ', Stroke),
        'ẞ' => ('ß', Same),
        'ƪ' => ('ſ', Mirror),
        'Ỽ' | 'ỽ' => ('v', Hook),
        'Ỿ' | 'ỿ' => ('y', Hook),
        'ȸ' => return pair('d', 'b'),
        'ȹ' => return pair('q', 'p'),
        'Ỻ' => return pair('L', 'L'),
        'ỻ' => return pair('l', 'l'),
        _ => return halves(c),
    };
    let mut b = font_glyph(base).or_else(|| own_glyph(base))?;
    match how {
        Stroke => b[4] |= 0x3F,
        Hook => {
            b[0] |= 0b0110_0000;
            b[1] |= 0b0100_0000;
        }
        // Glyphs use columns 0 to 6: a mirror maps column x to 6 - x.
        Mirror | Turn => b.iter_mut().for_each(|row| *row = row.reverse_bits() >> 1),
        Same => {}
    }
    if matches!(how, Turn) {
        b.reverse();
    }
    Some(b)
}

/// A character whose compatibility decomposition is two letters (`ǆ` is `dž`): both at half
/// width, side by side.
fn halves(c: char) -> Option<[u8; 8]> {
    use unicode_normalization::UnicodeNormalization;
    let parts: Vec<char> = std::iter::once(c).nfkd().collect();
    match parts[..] {
        [a, b] | [a, b, _] if a != c => pair(a, b),
        _ => None,
    }
}

/// Two characters at half width, side by side.
fn pair(first: char, second: char) -> Option<[u8; 8]> {
    let half =
        |g: [u8; 8]| g.map(|row| (0..4).fold(0u8, |acc, x| acc | ((row >> (2 * x) & 1) << x)));
    let (a, b) = (half(glyph(first)), half(glyph(second)));
    Some(std::array::from_fn(|row| a[row] | (b[row] << 4)))
}

/// A letter and its combining marks, drawn together: marks above take the two top rows (a
/// capital moves down a row to make room, and its mark is one row), marks below the bottom row.
fn compose(c: char) -> Option<[u8; 8]> {
    use unicode_normalization::UnicodeNormalization;
    let mut parts = std::iter::once(c).nfd();
    let base = parts.next()?;
    let marks: Vec<char> = parts.collect();
    if marks.is_empty() || base == c {
        return None;
    }
    let above = marks.iter().any(|&m| mark_above(m).is_some());
    // An i or j under a mark loses its dot.
    let base = match base {
        'i' if above => 'ı',
        'j' if above => 'ȷ',
        b => b,
    };
    let mut bitmap = font_glyph(base).or_else(|| own_glyph(base))?;
    let capital = base.is_uppercase() || base.is_ascii_digit();
    if capital && above {
        bitmap.rotate_right(1);
        bitmap[0] = 0;
    }
    for mark in marks {
        if let Some([upper, lower]) = mark_above(mark) {
            if capital {
                bitmap[0] |= upper | lower;
            } else {
                bitmap[0] |= upper;
                bitmap[1] |= lower;
            }
        } else if let Some(bits) = mark_below(mark) {
            bitmap[7] |= bits;
        } else {
            return None;
        }
    }
    Some(bitmap)
}

/// A combining mark drawn above a letter, as two rows.
fn mark_above(mark: char) -> Option<[u8; 2]> {
    Some(match mark {
        '\u{300}' => rows(["..X.....", "...X...."]), // grave
        '\u{301}' => rows(["....X...", "...X...."]), // acute
        '\u{302}' => rows(["...X....", "..X.X..."]), // circumflex
        '\u{303}' => rows(["..X.X...", ".X.X...."]), // tilde
        '\u{304}' => rows(["........", ".XXXX..."]), // macron
        '\u{306}' => rows([".X..X...", "..XX...."]), // breve
        '\u{307}' => rows(["...X....", "........"]), // dot above
        '\u{308}' => rows([".X..X...", "........"]), // diaeresis
        '\u{309}' => rows(["..XX....", "...X...."]), // hook above
        '\u{30A}' => rows(["..XX....", "..XX...."]), // ring above
        '\u{30B}' => rows(["..X.X...", ".X.X...."]), // double acute
        '\u{30C}' => rows(["..X.X...", "...X...."]), // caron
        '\u{30F}' => rows([".X.X....", "..X.X..."]), // double grave
        '\u{311}' => rows(["..XX....", ".X..X..."]), // inverted breve
        '\u{313}' | '\u{314}' | '\u{31B}' => rows(["....XX..", ".....X.."]), // comma, horn
        _ => return None,
    })
}

/// A combining mark drawn below a letter, as one row.
fn mark_below(mark: char) -> Option<u8> {
    Some(match mark {
        '\u{323}' => rows(["...X...."])[0], // dot below
        '\u{324}' => rows([".X..X..."])[0], // diaeresis below
        '\u{325}' => rows(["..XX...."])[0], // ring below
        '\u{326}' => rows(["..X....."])[0], // comma below
        '\u{327}' => rows(["...XX..."])[0], // cedilla
        '\u{328}' => rows(["....XX.."])[0], // ogonek
        '\u{32D}' | '\u{32E}' | '\u{330}' => rows(["..X.X..."])[0], // circumflex, breve, tilde
        '\u{331}' => rows([".XXXX..."])[0], // macron below
        _ => return None,
    })
}

/// Unicode's last resort: the code point in hexadecimal, four digits of 3×4 pixels in two rows
/// (`0E01` for `ก`); beyond the Basic Multilingual Plane, a question mark between corner marks.
fn last_resort(c: char) -> [u8; 8] {
    const DIGITS: [[u8; 4]; 16] = {
        let pictures = [
            ["XXX", "X.X", "X.X", "XXX"],
            [".X.", "XX.", ".X.", "XXX"],
            ["XX.", "..X", ".X.", "XXX"],
            ["XXX", ".XX", "..X", "XXX"],
            ["X.X", "X.X", "XXX", "..X"],
            ["XXX", "XX.", "..X", "XX."],
            [".XX", "X..", "XXX", "XXX"],
            ["XXX", "..X", ".X.", ".X."],
            ["XXX", "XXX", "X.X", "XXX"],
            ["XXX", "XXX", "..X", "XX."],
            [".X.", "X.X", "XXX", "X.X"],
            ["XX.", "XXX", "X.X", "XX."],
            [".XX", "X..", "X..", ".XX"],
            ["XX.", "X.X", "X.X", "XX."],
            ["XXX", "XX.", "X..", "XXX"],
            ["XXX", "XX.", "X..", "X.."],
        ];
        let mut out = [[0u8; 4]; 16];
        let mut d = 0;
        while d < 16 {
            out[d] = rows(pictures[d]);
            d += 1;
        }
        out
    };
    let code = c as u32;
    if code > 0xFFFF {
        let mut b = font_glyph('?').unwrap_or_default();
        b[0] |= 0x81;
        b[7] |= 0x81;
        return b;
    }
    let digit = |i: u32| DIGITS[((code >> (12 - 4 * i)) & 0xF) as usize];
    let mut bitmap = [0u8; 8];
    for (row, bits) in bitmap.iter_mut().enumerate() {
        let (left, right) = if row < 4 {
            (digit(0), digit(1))
        } else {
            (digit(2), digit(3))
        };
        *bits = left[row % 4] | (right[row % 4] << 4);
    }
    bitmap
}

/// Encodes pixels as PNG (fast compression: the emulator favours latency over size).
pub(crate) fn encode_png(image: &RgbImage) -> Vec<u8> {
    let mut bytes = Vec::new();
    PngEncoder::new_with_quality(&mut bytes, CompressionType::Fast, FilterType::Adaptive)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            image::ExtendedColorType::Rgb8,
        )
        .expect("encoding an in-memory RGB image to a Vec cannot fail");
    bytes
}

/// Decodes an input image (PNG or JPEG), refusing images larger than [`MAX_INPUT_SIDE`] on a side.
pub(crate) fn decode(bytes: &[u8]) -> Result<RgbImage, String> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    if reader.format().is_none() {
        return Err("it is not a PNG or JPEG image".to_owned());
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_INPUT_SIDE);
    limits.max_image_height = Some(MAX_INPUT_SIDE);
    reader.limits(limits);
    let image = reader.decode().map_err(|e| e.to_string())?;
    Ok(image.to_rgb8())
}

fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h = h.fract() * 6.0;
    let c = v * s;
    let x = c * (1.0 - (h % 2.0 - 1.0).abs());
    let (r, g, b) = match h as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [r + m, g + m, b + m]
}

fn mix(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    let t = t.clamp(0.0, 1.0);
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

/// 1 inside `inner`, 0 beyond `outer`, smooth between (either order).
fn smooth(outer: f32, inner: f32, d: f32) -> f32 {
    let t = ((outer - d) / (outer - inner)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

fn to_rgb(c: [f32; 3]) -> Rgb<u8> {
    Rgb(c.map(|v| (v.clamp(0.0, 1.0) * 255.0 + 0.5) as u8))
}

/// FNV-1a: a stable hash, so a request's picture is the same across runs and Rust versions.
pub(crate) struct Fnv(u64);

impl Fnv {
    pub(crate) fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so ("ab","c") and ("a","bc") differ.
        self.0 = (self.0 ^ 0xff).wrapping_mul(0x0100_0000_01b3);
    }

    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}

/// SplitMix64: a small, seedable random generator.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix(pub(crate) u64);

impl SplitMix {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// A number in `[0, 1)`, with double precision.
    pub(crate) fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The SHA-256 of `bytes`, in lowercase hex: the name an uploaded input image must have.
pub(crate) fn content_hash(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_latin_letter_has_a_glyph_of_its_own() {
        let blocks = [
            0x00C0..=0x024F, // Latin-1 Supplement letters, Latin Extended-A and -B
            0x1E00..=0x1EFF, // Latin Extended Additional (Vietnamese among them)
        ];
        let mut missing = Vec::new();
        for c in blocks.into_iter().flatten().filter_map(char::from_u32) {
            if c.is_alphabetic() && glyph(c) == last_resort(c) {
                missing.push(c);
            }
        }
        // The letters the seeds' languages need, by name.
        for c in "ğĞşŞıİœŒçÇöÖüÜâêîôûéèàëïÿæÆ".chars() {
            assert_ne!(glyph(c), last_resort(c), "{c}");
            let base = unicode_normalization::UnicodeNormalization::nfd(std::iter::once(c)).next();
            if let Some(base) = base.filter(|&b| b != c) {
                assert_ne!(glyph(c), glyph(base), "{c} looks like {base}");
            }
        }
        assert!(
            missing.is_empty(),
            "Latin letters without a glyph: {missing:?}"
        );
    }

    #[test]
    fn a_character_of_another_script_shows_its_code_point() {
        let thai = glyph('ก'); // U+0E01
        assert_eq!(thai, last_resort('ก'));
        assert_ne!(thai, last_resort('ข'), "each code point looks different");
        assert_ne!(
            thai,
            [0x00, 0x7E, 0x42, 0x42, 0x42, 0x42, 0x7E, 0x00],
            "not a box"
        );
    }

    #[test]
    fn wrapping() {
        assert_eq!(wrap("a bb ccc", 4, 4), ["a bb", "ccc"]);
        assert_eq!(wrap("abcdefghij", 4, 4), ["abcd", "efgh", "ij"]);
        assert_eq!(wrap("a b c d e f", 1, 2), ["a", "..."]);
        assert_eq!(wrap("aaaa bbbb cccc", 4, 2), ["aaaa", "b..."]);
        assert!(wrap("   ", 4, 4).is_empty());
    }

    #[test]
    fn a_request_renders_the_same_picture_twice() {
        let request = GenerateRequest::text_to_image("a lighthouse")
            .quality(Quality::Low)
            .build()
            .unwrap();
        assert_eq!(render(&request, &[]), render(&request, &[]));
    }
}
