//! `tariff-web`: the example web application behind `tariff gateway` (examples/web/), one
//! binary with three functions, picked by its first argument:
//!
//! * `home`: the home page (deployed persistent, routed at `critical`);
//! * `profile`: a profile page for `/profile/{id}` (persistent, `high`);
//! * `resize`: halves a binary PPM image (P6) `passes` times, default once, with a 2×2 box
//!   filter (exec, one process per call, `batch`): real CPU work proportional to the image.
//!   `rounds=N` computes the whole resize N times, standing in for a costlier filter
//!   (Lanczos, sharpening) so a benchmark can set the CPU time per image without sending
//!   larger images.
//!
//! Each handles the gateway's HTTP envelope through `tariff_function::http`; `resize` uses
//! the exec form (one request on stdin, the answer on stdout).

use tariff_function::http::{handle_http_once, serve_http, Request, Response};

/// Largest `passes` accepted: each halves the image, so more than this leaves nothing.
const MAX_PASSES: u32 = 16;
/// Largest `rounds` accepted: enough for a second of CPU on a large image.
const MAX_ROUNDS: u32 = 10_000;

fn main() {
    let role = std::env::args().nth(1).unwrap_or_default();
    let result = match role.as_str() {
        "home" => serve_http(home),
        "profile" => serve_http(profile),
        "resize" => handle_http_once(resize),
        other => tariff_example_functions::die(&format!(
            "usage: tariff-web home|profile|resize (got `{other}`)"
        )),
    };
    if let Err(e) = result {
        tariff_example_functions::die(&format!("tariff-web {role}: {e}"));
    }
}

fn html(body: String) -> Response {
    Response::new(200)
        .with_header("Content-Type", "text/html; charset=utf-8")
        .with_body(body)
}

fn home(request: Request) -> Response {
    let who = request.header("x-forwarded-for").unwrap_or("someone");
    html(format!(
        "<!doctype html><title>Tariff web</title><h1>Home</h1>\
         <p>Hello, {}. This page is served at price class <b>critical</b>.</p>\
         <p><a href=\"/profile/1\">a profile</a> (high) · POST a PPM image to /images (batch)</p>\n",
        escape(who)
    ))
}

fn profile(request: Request) -> Response {
    let Some(id) = request.header("tariff-param-id") else {
        return Response::new(400).with_body("no profile id\n");
    };
    html(format!(
        "<!doctype html><title>Profile {0}</title><h1>Profile {0}</h1>\
         <p>Served at price class <b>high</b>.</p>\n",
        escape(id)
    ))
}

fn resize(request: Request) -> Response {
    let passes = query_value(&request, "passes")
        .map(|v| v.parse::<u32>())
        .unwrap_or(Ok(1));
    let Ok(passes @ 1..=MAX_PASSES) = passes else {
        return Response::new(400).with_body(format!("passes must be 1 to {MAX_PASSES}\n"));
    };
    let rounds = query_value(&request, "rounds")
        .map(|v| v.parse::<u32>())
        .unwrap_or(Ok(1));
    let Ok(rounds @ 1..=MAX_ROUNDS) = rounds else {
        return Response::new(400).with_body(format!("rounds must be 1 to {MAX_ROUNDS}\n"));
    };
    let Some(original) = Ppm::parse(&request.body) else {
        return Response::new(415).with_body("send a binary PPM (P6, maxval 255)\n");
    };
    let resize = |image: &Ppm| {
        let mut resized = image.halve();
        for _ in 1..passes {
            resized = resized.halve();
        }
        resized
    };
    let image = resize(&original);
    for _ in 1..rounds {
        std::hint::black_box(resize(std::hint::black_box(&original)));
    }
    Response::new(200)
        .with_header("Content-Type", "image/x-portable-pixmap")
        .with_header("X-Image-Size", format!("{}x{}", image.width, image.height))
        .with_body(image.encode())
}

fn query_value<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request
        .query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An 8-bit RGB image.
struct Ppm {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl Ppm {
    /// Reads `P6 W H 255` followed by W×H×3 bytes (no comments).
    fn parse(bytes: &[u8]) -> Option<Self> {
        let mut fields = Vec::new();
        let mut at = 0;
        while fields.len() < 4 {
            while bytes.get(at)?.is_ascii_whitespace() {
                at += 1;
            }
            let start = at;
            while !bytes.get(at)?.is_ascii_whitespace() {
                at += 1;
            }
            fields.push(std::str::from_utf8(&bytes[start..at]).ok()?);
        }
        at += 1;
        let (width, height) = (fields[1].parse().ok()?, fields[2].parse().ok()?);
        if fields[0] != "P6" || fields[3] != "255" {
            return None;
        }
        let pixels = bytes.get(at..at + width * height * 3)?.to_vec();
        Some(Self {
            width,
            height,
            pixels,
        })
    }

    /// Half the size: each output pixel is the mean of a 2×2 block.
    fn halve(&self) -> Self {
        let (width, height) = ((self.width / 2).max(1), (self.height / 2).max(1));
        let mut pixels = Vec::with_capacity(width * height * 3);
        for y in 0..height {
            for x in 0..width {
                for c in 0..3 {
                    let mut sum = 0u32;
                    for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                        let sx = (2 * x + dx).min(self.width - 1);
                        let sy = (2 * y + dy).min(self.height - 1);
                        sum += u32::from(self.pixels[(sy * self.width + sx) * 3 + c]);
                    }
                    pixels.push(u8::try_from(sum / 4).unwrap_or(u8::MAX));
                }
            }
        }
        Self {
            width,
            height,
            pixels,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = format!("P6\n{} {}\n255\n", self.width, self.height).into_bytes();
        out.extend_from_slice(&self.pixels);
        out
    }
}
