//! A plain HTTP/1.1 client for the HTTP API tests: one request per connection, the body by
//! its length or to the end of the stream, chunked bodies joined.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

fn broken(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// Status, headers (lower-case names) and body of a response.
pub type Reply = (u16, Vec<(String, String)>, Vec<u8>);

/// One HTTP/1.1 request.
pub fn request(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let body = body.unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    // Up to the end of the head, then the body by its length (chromedriver keeps the
    // connection open), or to the end of the stream.
    let mut response = Vec::new();
    let mut buffer = [0u8; 65536];
    let split = loop {
        if let Some(split) = response.windows(4).position(|window| window == b"\r\n\r\n") {
            break split;
        }
        let read = stream.read(&mut buffer)?;
        if read == 0 {
            return Err(broken("no HTTP response head"));
        }
        response.extend_from_slice(&buffer[..read]);
    };
    let length = String::from_utf8_lossy(&response[..split])
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
        });
    match length {
        Some(length) if method != "HEAD" => {
            while response.len() < split + 4 + length {
                let read = stream.read(&mut buffer)?;
                if read == 0 {
                    return Err(broken("HTTP body cut short"));
                }
                response.extend_from_slice(&buffer[..read]);
            }
        }
        Some(_) => {}
        None => {
            stream.read_to_end(&mut response)?;
        }
    }
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let mut content = response[split + 4..].to_vec();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| broken("no status"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_ascii_lowercase(), value.trim().to_string()))
        })
        .collect();
    if headers
        .iter()
        .any(|(name, value)| name == "transfer-encoding" && value.contains("chunked"))
    {
        content = unchunk(&content)?;
    }
    Ok((status, headers, content))
}

fn unchunk(mut data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|window| window == b"\r\n")
            .ok_or_else(|| broken("chunk size"))?;
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&data[..line_end])
                .split(';')
                .next()
                .unwrap_or_default()
                .trim(),
            16,
        )
        .map_err(|_| broken("chunk size"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = data.get(..size).ok_or_else(|| broken("chunk cut short"))?;
        out.extend_from_slice(chunk);
        data = data.get(size + 2..).unwrap_or_default();
    }
}
