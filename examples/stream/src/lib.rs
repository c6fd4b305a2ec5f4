//! `stream`: an http-world component whose bodies stream, written against
//! wasi:http directly (the SDK's handlers take and give whole bodies).
//!
//! - `GET /bytes?n=N` answers N bytes, byte `i` being `i % 251`, written as
//!   they are made: a body far larger than the guest's memory.
//! - `GET /ticks?n=N&every=MS` answers `tick 1` … `tick N`, one line every MS
//!   milliseconds, each flushed on its own.
//! - `POST /count` reads the request body as it arrives and answers
//!   `bytes=N fnv=H`: its length and its FNV-1a 64 hash in hex.

use wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasi::io::streams::{OutputStream, StreamError};

/// The most one `blocking-write-and-flush` takes.
const WRITE: usize = 4096;
/// Bytes asked for per read.
const READ: u64 = 64 * 1024;

struct Stream;

wasi::http::proxy::export!(Stream);

impl wasi::exports::http::incoming_handler::Guest for Stream {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let (path, query) = path.split_once('?').unwrap_or((&path, ""));
        let param = |key: &str| -> u64 {
            query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0)
        };
        match (request.method(), path) {
            (Method::Get, "/bytes") => {
                let n = param("n");
                respond(response_out, 200, Some(n), |out| write_pattern(out, n));
            }
            (Method::Get, "/ticks") => {
                let (n, every) = (param("n"), param("every"));
                respond(response_out, 200, None, |out| {
                    for i in 1..=n {
                        out.blocking_write_and_flush(format!("tick {i}\n").as_bytes())?;
                        if i < n {
                            let ns = every.saturating_mul(1_000_000);
                            wasi::clocks::monotonic_clock::subscribe_duration(ns).block();
                        }
                    }
                    Ok(())
                });
            }
            (Method::Post, "/count") => match count(&request) {
                Ok((bytes, hash)) => {
                    let text = format!("bytes={bytes} fnv={hash:016x}\n");
                    respond(response_out, 200, Some(text.len() as u64), |out| {
                        out.blocking_write_and_flush(text.as_bytes())
                    });
                }
                Err(why) => {
                    let text = format!("reading the body failed: {why}\n");
                    respond(response_out, 400, None, |out| {
                        out.blocking_write_and_flush(text.as_bytes())
                    });
                }
            },
            _ => {
                let text = "try GET /bytes?n=N, GET /ticks?n=N&every=MS or POST /count\n";
                respond(response_out, 404, None, |out| {
                    out.blocking_write_and_flush(text.as_bytes())
                });
            }
        }
    }
}

/// Sets the response head, then lets `write` produce the body.
fn respond(
    out: ResponseOutparam,
    status: u16,
    length: Option<u64>,
    write: impl FnOnce(&OutputStream) -> Result<(), StreamError>,
) {
    let mut headers = vec![(
        "content-type".to_owned(),
        b"application/octet-stream".to_vec(),
    )];
    if let Some(n) = length {
        headers.push(("content-length".to_owned(), n.to_string().into_bytes()));
    }
    let fields = Fields::from_list(&headers).expect("valid headers");
    let response = OutgoingResponse::new(fields);
    response.set_status_code(status).expect("valid status");
    let body = response.body().expect("body taken once");
    ResponseOutparam::set(out, Ok(response));
    let stream = body.write().expect("stream taken once");
    // A client that goes away ends the body early; nothing to tell it.
    let written = write(&stream);
    drop(stream);
    if written.is_ok() {
        let _ = OutgoingBody::finish(body, None);
    }
}

fn write_pattern(out: &OutputStream, n: u64) -> Result<(), StreamError> {
    let mut chunk = [0u8; WRITE];
    let mut sent = 0u64;
    while sent < n {
        let len = (n - sent).min(WRITE as u64) as usize;
        for (k, b) in chunk[..len].iter_mut().enumerate() {
            *b = ((sent + k as u64) % 251) as u8;
        }
        out.blocking_write_and_flush(&chunk[..len])?;
        sent += len as u64;
    }
    Ok(())
}

/// The request body's length and FNV-1a 64 hash, read as it comes.
fn count(request: &IncomingRequest) -> Result<(u64, u64), String> {
    let body = request.consume().map_err(|()| "no body".to_string())?;
    let stream = body
        .stream()
        .map_err(|()| "the body stream was taken".to_string())?;
    let (mut bytes, mut hash) = (0u64, 0xcbf2_9ce4_8422_2325u64);
    loop {
        match stream.blocking_read(READ) {
            Ok(chunk) => {
                bytes += chunk.len() as u64;
                for b in chunk {
                    hash ^= u64::from(b);
                    hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
                }
            }
            Err(StreamError::Closed) => return Ok((bytes, hash)),
            Err(e) => return Err(format!("{e:?}")),
        }
    }
}
