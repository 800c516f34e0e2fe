//! The VISION benchmark's reference (`scripts/bench.sh vision`): the same
//! processing as a sidecar stream frame (raw BGR pixels to an OpenCV
//! matrix, BlazeFace through LiteRT with MediaPipe's decoding) in a plain
//! in-process loop, on the same synthetic frames.
//!
//! With an H.264 Annex-B file, the pictures of that stream instead, fed to
//! the stream decoder in chunks of CHUNK bytes (as the client sends them),
//! the file over and over (its first picture is an IDR).
//!
//! Usage: vision_direct LIBLITERT MODEL WIDTH HEIGHT SECONDS [H264-FILE CHUNK]
//! Prints `fps=..` (pictures per second).
#![allow(clippy::print_stdout)] // The report is this tool's output.

use std::path::Path;
use std::time::{Duration, Instant};

use sidecar_proto::v1::{Image, PixelFormat, RawImage, image};
use worker_vision::detect::Ssd;
use worker_vision::h264::H264;
use worker_vision::image::to_bgr;

/// The benchmark's frames: frame `k` of a `w`x`h` BGR sequence (the client
/// side makes the same bytes).
pub fn frame(w: usize, h: usize, k: usize) -> Vec<u8> {
    (0..w * h * 3)
        .map(|i| ((i / 3 % w + i / 3 / w + 7 * k + (i % 3) * 50) % 256) as u8)
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The worker's allocator settings, so both sides allocate alike.
    ipc::malloc::keep_freed_memory();
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 6 && a.len() != 8 {
        return Err(
            "usage: vision_direct LIBLITERT MODEL WIDTH HEIGHT SECONDS [H264-FILE CHUNK]".into(),
        );
    }
    let (w, h): (usize, usize) = (a[3].parse()?, a[4].parse()?);
    let seconds: f64 = a[5].parse()?;
    let mut ssd = Ssd::load(Path::new(&a[1]), Path::new(&a[2]), 1, None)?;
    if let Some(file) = a.get(6) {
        let stream = std::fs::read(file)?;
        let chunk_bytes: usize = a[7].parse()?;
        let mut decoder = H264::new(Default::default())?;
        let (start, mut n) = (Instant::now(), 0usize);
        while start.elapsed() < Duration::from_secs_f64(seconds) {
            for chunk in stream.chunks(chunk_bytes) {
                decoder.feed(chunk, false, "chunk", |mat| {
                    ssd.detect(&mat, 0.5, 0.3)?;
                    n += 1;
                    Ok(())
                })?;
                if start.elapsed() >= Duration::from_secs_f64(seconds) {
                    break;
                }
            }
        }
        println!("fps={:.1}", n as f64 / start.elapsed().as_secs_f64());
        return Ok(());
    }
    let images: Vec<Image> = (0..8)
        .map(|k| Image {
            data: Some(image::Data::Raw(RawImage {
                shm: Default::default(),
                width: w as u32,
                height: h as u32,
                format: PixelFormat::Bgr8 as i32,
                stride: 0,
                data: frame(w, h, k).into(),
            })),
        })
        .collect();
    let (start, mut n) = (Instant::now(), 0usize);
    while start.elapsed() < Duration::from_secs_f64(seconds) {
        let mat = to_bgr(
            &images[n % images.len()],
            "frame",
            &Default::default(),
            &Default::default(),
        )?;
        ssd.detect(&mat, 0.5, 0.3)?;
        n += 1;
    }
    println!("fps={:.1}", n as f64 / start.elapsed().as_secs_f64());
    Ok(())
}
