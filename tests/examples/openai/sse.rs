//! The bench's HTTP/1.1 client (`bench_openai`): one request a
//! connection, chunked or sized bodies, and OpenAI's streamed chat
//! completion read as server-sent events.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub(crate) type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// What one streamed request gave.
pub(crate) struct Streamed {
    /// Request sent → first non-empty content delta.
    pub(crate) ttft: Duration,
    /// Non-empty content deltas.
    pub(crate) deltas: u64,
    /// The usage chunk's.
    pub(crate) completion_tokens: u64,
    /// The usage chunk's.
    pub(crate) prompt_tokens: u64,
}

/// A response body, chunked or not.
pub(crate) struct Body {
    reader: BufReader<TcpStream>,
    chunked: bool,
    /// Bytes left: of the body (`content-length`), or of the current chunk.
    left: Option<usize>,
    done: bool,
}

impl Body {
    /// The next piece of the body; `None` at its end.
    async fn next(&mut self) -> Res<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        if self.chunked {
            let mut line = String::new();
            self.reader.read_line(&mut line).await?;
            let size = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| format!("bad chunk size line {line:?}"))?;
            if size == 0 {
                // Trailers, up to the blank line.
                loop {
                    line.clear();
                    if self.reader.read_line(&mut line).await? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                self.done = true;
                return Ok(None);
            }
            let mut chunk = vec![0; size + 2];
            self.reader.read_exact(&mut chunk).await?;
            chunk.truncate(size);
            return Ok(Some(chunk));
        }
        let want = self.left.unwrap_or(64 * 1024).min(64 * 1024);
        if want == 0 {
            self.done = true;
            return Ok(None);
        }
        let mut buf = vec![0; want];
        let n = self.reader.read(&mut buf).await?;
        if n == 0 {
            self.done = true;
            if self.left.is_some() {
                return Err("the connection closed inside the body".into());
            }
            return Ok(None);
        }
        buf.truncate(n);
        if let Some(left) = self.left.as_mut() {
            *left -= n;
        }
        Ok(Some(buf))
    }

    /// The whole (rest of the) body, as text.
    pub(crate) async fn text(mut self) -> String {
        let mut all = Vec::new();
        while let Ok(Some(piece)) = self.next().await {
            all.extend(piece);
        }
        String::from_utf8_lossy(&all).into_owned()
    }
}

/// Sends one HTTP/1.1 request: (status, body).
pub(crate) async fn http(port: u16, method: &str, path: &str, body: &str) -> Res<(u16, Body)> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream);
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Accept: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let stream = reader.get_mut();
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let (mut chunked, mut left) = (false, None);
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Err("the connection closed inside the headers".into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (name, value) = l.split_once(':').unwrap_or((l, ""));
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            left = Some(value.parse()?);
        }
    }
    let left = if chunked { None } else { left };
    Ok((
        status,
        Body {
            reader,
            chunked,
            left,
            done: false,
        },
    ))
}

/// One streamed chat completion, parsed as OpenAI's SSE: `data: {json}`
/// events separated by blank lines, a role delta, content deltas, a usage
/// chunk, `data: [DONE]`. `request` is the JSON body.
pub(crate) async fn chat(port: u16, request: &str) -> Res<Streamed> {
    let start = Instant::now();
    let (status, mut body) = http(port, "POST", "/v1/chat/completions", request).await?;
    if status != 200 {
        return Err(format!("HTTP {status}: {}", body.text().await).into());
    }
    let (mut buf, mut ttft, mut deltas, mut usage) = (String::new(), None, 0u64, None);
    while let Some(piece) = body.next().await? {
        buf.push_str(&String::from_utf8_lossy(&piece).replace('\r', ""));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if data.is_empty() {
                continue; // a comment or keep-alive
            }
            let data = data.join("\n");
            if data == "[DONE]" {
                let ttft = ttft.ok_or("the stream had no content delta")?;
                let u: Value = usage.ok_or("no usage chunk (stream_options.include_usage)")?;
                return Ok(Streamed {
                    ttft,
                    deltas,
                    completion_tokens: u["completion_tokens"]
                        .as_u64()
                        .ok_or("usage.completion_tokens")?,
                    prompt_tokens: u["prompt_tokens"].as_u64().ok_or("usage.prompt_tokens")?,
                });
            }
            let chunk: Value = serde_json::from_str(&data)
                .map_err(|e| format!("chunk {data:?} is no JSON: {e}"))?;
            if chunk.get("error").is_some() {
                return Err(format!("error in the stream: {data}").into());
            }
            let content = chunk["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or("");
            if !content.is_empty() {
                ttft.get_or_insert_with(|| start.elapsed());
                deltas += 1;
            }
            if chunk["usage"].is_object() {
                usage = Some(chunk["usage"].clone());
            }
        }
    }
    Err("the stream ended without data: [DONE]".into())
}
