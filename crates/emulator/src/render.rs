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

/// Draws `text` with the 8×8 bitmap font, each font pixel `scale`×`scale`. Characters the font
/// lacks are drawn as a hollow box.
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

fn glyph(c: char) -> [u8; 8] {
    use font8x8::UnicodeFonts;
    let fonts: [&dyn Fn(char) -> Option<[u8; 8]>; 4] = [
        &|c| font8x8::BASIC_FONTS.get(c),
        &|c| font8x8::LATIN_FONTS.get(c),
        &|c| font8x8::GREEK_FONTS.get(c),
        &|c| font8x8::HIRAGANA_FONTS.get(c),
    ];
    fonts
        .iter()
        .find_map(|font| font(c))
        .unwrap_or([0x00, 0x7E, 0x42, 0x42, 0x42, 0x42, 0x7E, 0x00])
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

#[cfg(test)]
mod tests {
    use super::*;

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
